"""Data: curation pipelines (datatrove), model-based quality filters, the embedded demo corpus, token shards."""
