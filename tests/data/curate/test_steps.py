"""The step registry: parameters checked by name, extraction on HTML only, a fastText model trained on the spot,
and every step checked before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmtrain.config import ConfigError, UserError
from slmtrain.data.curate import run_pipeline
from tests.data.curate.corpus import PROSE, SMALL_PIPELINE, read_gz


def test_fasttext_step_trained_on_the_spot_and_empty_input(corpus: Path, tmp_path: Path) -> None:
    overrides = {"steps": {"fasttext": {"type": "fasttext_quality", "model": "ft.bin", "top_fraction": 0.5,
                                        "calibration_docs": 10,
                                        "train": {"positives": ["{output}/work/stage_1"],
                                                  "negatives": ["{output}/removed/gopher_quality"],
                                                  "dim": 16, "bucket": 20_000}}}}
    declaration = tmp_path / "small.yaml"
    declaration.write_text(SMALL_PIPELINE)
    stats = run_pipeline(str(declaration), corpus, tmp_path / "out", overrides=overrides, workers=1)
    fasttext = stats.step("fasttext")
    assert (tmp_path / "out" / "ft.bin").is_file() and (tmp_path / "out" / "fasttext_training.json").is_file()
    assert fasttext.documents_in > 0 and fasttext.removed_by_reason["low_fasttext_quality"] > 0
    assert stats.totals.balanced



def test_html_folder_is_extracted_and_failures_recorded(tmp_path: Path) -> None:
    pages = tmp_path / "html"
    pages.mkdir()
    for i, text in enumerate(PROSE[:3]):
        body = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        (pages / f"page{i}.html").write_text(f"<html><head><title>t</title></head><body><article>{body}</article>"
                                             "</body></html>")
    (pages / "empty.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    stats = run_pipeline("fineweb", pages, tmp_path / "out", overrides={"steps": {"minhash": {"enabled": False}}},
                         workers=1)
    extraction = stats.step("trafilatura")
    assert extraction.documents_in == 4 and extraction.removed_by_reason == {"empty_extraction": 1}
    assert [r["metadata"]["filter_reason"] for r in read_gz(tmp_path / "out" / "removed" / "trafilatura")] == [
        "empty_extraction"]
    assert stats.totals.balanced
    assert all("<p>" not in r["text"] for r in read_gz(tmp_path / "out" / "kept"))



def test_unknown_step_parameter_is_an_error_naming_valid_keys(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps.gopher_quality.min_words: unknown key; valid keys: .*min_doc_words"):
        run_pipeline("demo", corpus, tmp_path / "o", overrides={"steps": {"gopher_quality": {"min_words": 3}}})
    with pytest.raises(UserError, match="input not found"):
        run_pipeline("fineweb", tmp_path / "missing", tmp_path / "o")



def test_missing_quality_model_fails_before_any_stage_runs(corpus: Path, tmp_path: Path) -> None:
    missing = tmp_path / "none.bin"
    with pytest.raises(UserError, match=f"^steps.fasttext: fastText quality model not found: {missing} "):
        run_pipeline("dclm", corpus, tmp_path / "out", overrides={"steps": {"fasttext": {"model": str(missing)}}})
    assert not (tmp_path / "out").exists()
