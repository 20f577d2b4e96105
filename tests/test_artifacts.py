"""Artifacts loaded from untrusted files fail as one line that gives no unsafe advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmtrain.artifacts import checksum_path, file_sha256, read_checkpoint
from slmtrain.config import UserError


def test_a_checkpoint_that_cannot_be_unpickled_safely_is_one_line_without_unsafe_advice(tmp_path: Path) -> None:
    """Its sha256 verifies (it is the file that was written), yet it holds an object weights_only refuses: torch's
    message goes on to suggest weights_only=False, which would run the file's code; only its first line is kept."""
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "extra": Path("an object outside the allow-list")}, path)
    checksum_path(path).write_text(file_sha256(path) + "\n")
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable slmtrain checkpoint (UnpicklingError: ")
    assert "\n" not in message and "weights_only set to False" not in message


def test_a_damaged_hf_tokenizer_is_one_line(tmp_path: Path) -> None:
    from slmtrain.artifacts import HFTokenizer

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match=f"{tmp_path}: its tokenizer cannot be loaded") as error:
        HFTokenizer(tmp_path)
    assert "\n" not in str(error.value)
