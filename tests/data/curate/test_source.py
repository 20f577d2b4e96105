"""The input: empty, unreachable, mixed or unknown sources are one clear error each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmtrain.config import UserError
from slmtrain.data.curate import run_pipeline
from tests.output import diagnostics
from tests.paths import REPO_ROOT


def test_empty_input_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "launch/curate.py", "filter=fineweb", f"input={empty}",
                             f"output={tmp_path / 'out'}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and diagnostics(result.stderr).strip() == f"error: input folder {empty} is empty"
    (empty / "a.jsonl").write_text("\n\n")  # files, but no records in them
    with pytest.raises(UserError, match="no documents in"):
        run_pipeline(str(REPO_ROOT / "data_filters" / "demo.yaml"), empty, tmp_path / "out2",
                     overrides={"steps": {"minhash": {"enabled": False}, "fasttext": {"enabled": False}}}, workers=1)



def test_mixed_or_unknown_input_formats_are_clear_errors(corpus: Path, tmp_path: Path) -> None:
    (corpus / "extra.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="mixes input formats"):
        run_pipeline("demo", corpus, tmp_path / "out")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("plain text")
    with pytest.raises(UserError, match="no input files of a known format"):
        run_pipeline("demo", notes, tmp_path / "out2")



def test_unreachable_hub_input_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    def unreachable(self, name, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(UserError, match="cannot read hf://org/data from the Hugging Face Hub"):
        run_pipeline("fineweb", "hf://org/data", tmp_path / "out")
