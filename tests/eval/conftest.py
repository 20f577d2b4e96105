from __future__ import annotations

import pytest
import torch

from tests.eval.eval_helpers import BOS, EOS, ByteTokenizer, save_byte_level_hf_tokenizer, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and timings stay stable on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def hf_dir(tmp_path, model):
    """The tiny model exported as a transformers directory with a byte-level tokenizer."""
    from slmtrain.model.formats.hf import export_hf

    out = export_hf(model, tmp_path / "hf", bos_id=BOS, eos_id=EOS)
    save_byte_level_hf_tokenizer(out)
    return out
