"""Weight-format adapters beside the model, one per format: ``hf`` (transformers directories) and ``gguf``
(llama.cpp files). Each maps between a :class:`~slmtrain.model.transformer.Transformer` and the format through one
table of tensor names (``mapping``: the same rows drive export and import); none of them knows about training or
data."""
