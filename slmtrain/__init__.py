"""slmtrain: build small language models end to end (curation, tokenizer, scaling laws, training, evaluation)."""

__version__ = "0.1.0"
