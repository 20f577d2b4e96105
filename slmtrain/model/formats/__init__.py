"""Weight-format adapters beside the model, one per format: ``hf`` (transformers directories) and ``gguf``
(llama.cpp files). Each maps between a :class:`~slmtrain.model.transformer.Transformer` and the format; none of
them knows about training or data."""
