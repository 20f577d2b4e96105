"""The commands' tests use the evaluation tests' tiny model, byte-level tokenizer and its transformers export."""

from tests.eval.conftest import hf_dir, model, one_thread, tokenizer  # noqa: F401 (fixtures)
