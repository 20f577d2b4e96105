"""A tiny model exported as a transformers directory with a byte-level tokenizer, and the demo personal task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmtrain.adapt.personal import write_personal_task
from slmtrain.adapt.run import FinetuneOptions, load_options
from tests.eval.eval_helpers import BOS, EOS, save_byte_level_hf_tokenizer, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    from slmtrain.model.formats.hf import export_hf

    out = export_hf(tiny_model(), tmp_path_factory.mktemp("base") / "hf", bos_id=BOS, eos_id=EOS)
    save_byte_level_hf_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def task(tmp_path_factory) -> dict[str, Path]:
    return write_personal_task(tmp_path_factory.mktemp("personal"))


def options(base_dir: Path, task: dict[str, Path], run_dir: Path, **overrides) -> FinetuneOptions:
    """A short run on the personal task: held-out questions as the validation set."""
    return load_options({"model": str(base_dir), "data": str(task["train.jsonl"]), "val_data": str(task["val.jsonl"]),
                         "run_dir": str(run_dir), "seq_len": 96, "micro_batch": 4,
                         "trainer": {"max_steps": 30, "val_every_n_steps": 10}, **overrides})
