from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydoc_data.topics import topics

from slmtrain.config import ConfigError, UserError
from tests.output import diagnostics
from tests.paths import REPO_ROOT
from slmtrain.data.curate import run_pipeline
from slmtrain.data.curate.config import load_pipeline_config

PROSE = sorted((text for text in topics.values() if len(text) > 3_000), key=len)
STUBS = sorted({getattr(str, name).__doc__.strip().splitlines()[0] for name in dir(str) if not name.startswith("_")})

SMALL_PIPELINE = """
description: test pipeline
max_doc_chars: 200000
steps:
  language: {languages: [en], language_threshold: 0.3}
  gopher_quality: {min_doc_words: 20, max_symbol_word_ratio: 0.5, max_non_alpha_words_ratio: 0.3}
  minhash: {n_grams: 5, num_buckets: 4, hashes_per_bucket: 4}
"""


def read_gz(folder: Path) -> list[dict]:
    return [orjson.loads(line) for p in sorted(folder.rglob("*.jsonl.gz")) for line in gzip.open(p).read().splitlines()]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """The longest reference topics, 3 exact copies of one, one-line stubs, and 4 bad lines, over two files."""
    src = tmp_path / "corpus"
    src.mkdir()
    records = [{"text": t, "id": f"doc{i}"} for i, t in enumerate(PROSE)]
    records += [{"text": PROSE[0], "id": f"copy{i}"} for i in range(3)]
    records += [{"text": stub, "id": f"stub{i}"} for i, stub in enumerate(STUBS)]
    lines = [orjson.dumps(r) for r in records]
    (src / "a.jsonl").write_bytes(b"\n".join(lines[:25] + [b"{broken", b'{"id": "x"}']) + b"\n")
    (src / "b.jsonl").write_bytes(b"\n".join(lines[25:] + [b'{"text": "\xc3\x28"}', b'"just a string"']) + b"\n")
    return src


def test_pipeline_counts_every_document_and_writes_the_layout(corpus: Path, tmp_path: Path) -> None:
    declaration = tmp_path / "small.yaml"
    declaration.write_text(SMALL_PIPELINE)
    out = tmp_path / "out"
    stats = run_pipeline(str(declaration), corpus, out, workers=2)
    totals = stats.totals
    assert totals.documents_in == len(PROSE) + 3 + len(STUBS) + 4
    assert totals.rejected == 4 and totals.balanced
    assert totals.documents_in == totals.kept + totals.removed + totals.rejected
    assert stats.step("minhash").removed_by_reason == {"minhash": 3}  # the three copies of doc0
    removed_stubs = {r["id"] for step in ("language", "gopher_quality") for r in read_gz(out / "removed" / step)}
    assert {f"stub{i}" for i in range(len(STUBS))} <= removed_stubs  # too short to be sure of, or to keep
    assert stats.step("gopher_quality").removed_by_reason["gopher_short_doc"] > 0
    for row in stats.steps[1:]:  # every removal has a reason, in the stats and in removed/
        assert sum(row.removed_by_reason.values()) == row.removed
        assert all(r["metadata"]["filter_reason"] for r in read_gz(out / "removed" / row.step))
    kept = read_gz(out / "kept")
    assert len(kept) == totals.kept and {"text", "id", "metadata"} <= set(kept[0])
    assert len({r["text"] for r in kept}) == len(kept)
    assert sorted(r["metadata"]["reason"] for r in read_gz(out / "rejected")) == [
        "corrupt_json", "invalid_utf8", "missing_text", "not_an_object"]
    assert json.loads((out / "stats.json").read_text()) == stats.to_json()
    assert (out / "stats.png").stat().st_size > 1_000
    # a re-run skips the finished tasks (nothing is written again) and reports the same numbers
    written = {p: p.stat().st_mtime_ns for p in (out / "kept").rglob("*") if p.is_file()}
    again = run_pipeline(str(declaration), corpus, out, workers=2)
    assert again.totals == totals
    assert written == {p: p.stat().st_mtime_ns for p in (out / "kept").rglob("*") if p.is_file()}


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


def test_declarations_load_and_bad_keys_are_named() -> None:
    for name in ("fineweb", "fineweb_fast", "fineweb_edu", "dclm", "demo"):
        assert load_pipeline_config(name).steps
    fast = load_pipeline_config("fineweb_fast").steps
    assert list(fast) == [name.replace("trafilatura", "resiliparse") for name in load_pipeline_config("fineweb").steps]
    assert "edu" in load_pipeline_config("fineweb_edu").steps and "minhash" in load_pipeline_config("fineweb_edu").steps
    with pytest.raises(ConfigError, match="valid choices: .*demo"):
        load_pipeline_config("nope")
    with pytest.raises(ConfigError, match="steps.x.type.*valid choices"):
        load_pipeline_config("demo", {"steps": {"x": {"type": "magic"}}})


def test_unknown_step_parameter_is_an_error_naming_valid_keys(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps.gopher_quality.min_words: unknown key; valid keys: .*min_doc_words"):
        run_pipeline("demo", corpus, tmp_path / "o", overrides={"steps": {"gopher_quality": {"min_words": 3}}})
    with pytest.raises(UserError, match="input not found"):
        run_pipeline("fineweb", tmp_path / "missing", tmp_path / "o")


def test_cli_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "launch/curate.py", "filter=nope", f"output={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert diagnostics(result.stderr).strip().count("\n") == 0 and "unknown filter 'nope'" in diagnostics(result.stderr)
    result = subprocess.run([sys.executable, "launch/train_quality.py", "kind=embedding", f"out={tmp_path}/h.npz"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs annotations=" in diagnostics(result.stderr)


@pytest.mark.slow
def test_demo_pipeline_on_a_small_demo_source(tmp_path: Path) -> None:
    from slmtrain.data.demo import write_demo_documents

    source = write_demo_documents(tmp_path / "src", max_docs=600)
    stats = run_pipeline("demo", source, tmp_path / "out", workers=2)
    assert [row.step for row in stats.steps] == [
        "read", "language", "gopher_quality", "fineweb_quality", "minhash", "fasttext"]
    assert all(stats.step(name).removed > 0 for name in ("gopher_quality", "fasttext"))
    assert stats.totals.balanced and stats.totals.kept > 100
    training = json.loads((tmp_path / "out" / "fasttext_training.json").read_text())
    assert training["train_examples"] > 50


def test_rerun_with_other_settings_into_the_same_output_is_refused(corpus: Path, tmp_path: Path) -> None:
    declaration = tmp_path / "small.yaml"
    declaration.write_text(SMALL_PIPELINE)
    out = tmp_path / "out"
    for i in range(4):  # 6 input files: 4 tasks with workers=1, 6 with workers=2
        (corpus / f"more{i}.jsonl").write_text(json.dumps({"text": PROSE[i], "id": f"more{i}"}) + "\n")
    first = run_pipeline(str(declaration), corpus, out, workers=1)
    assert run_pipeline(str(declaration), corpus, out, workers=1).totals == first.totals  # resumes
    with pytest.raises(UserError, match="different tasks"):
        run_pipeline(str(declaration), corpus, out, workers=2)
    with pytest.raises(UserError, match="different config"):
        run_pipeline(str(declaration), corpus, out, workers=1, overrides={"steps": {"gopher_quality": {"enabled": False}}})


def test_mixed_or_unknown_input_formats_are_clear_errors(corpus: Path, tmp_path: Path) -> None:
    (corpus / "extra.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="mixes input formats"):
        run_pipeline("demo", corpus, tmp_path / "out")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("plain text")
    with pytest.raises(UserError, match="no input files of a known format"):
        run_pipeline("demo", notes, tmp_path / "out2")


def test_missing_quality_model_fails_before_any_stage_runs(corpus: Path, tmp_path: Path) -> None:
    missing = tmp_path / "none.bin"
    with pytest.raises(UserError, match=f"^steps.fasttext: fastText quality model not found: {missing} "):
        run_pipeline("dclm", corpus, tmp_path / "out", overrides={"steps": {"fasttext": {"model": str(missing)}}})
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_input_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    def unreachable(self, name, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(UserError, match="cannot read hf://org/data from the Hugging Face Hub"):
        run_pipeline("fineweb", "hf://org/data", tmp_path / "out")


def test_terminal_shows_progress_and_results_and_the_log_file_the_rest(corpus: Path, tmp_path: Path) -> None:
    declaration = tmp_path / "lid.yaml"
    declaration.write_text("steps:\n  language: {languages: [en], language_threshold: 0.3}\n")

    def curate(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "launch/curate.py", f"filter={declaration}", f"input={corpus}",
                               f"output={tmp_path / out}", "workers=1", *extra], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)

    quiet = curate("quiet")
    assert quiet.returncode == 0 and diagnostics(quiet.stderr) == ""
    assert quiet.stdout.startswith("[1/1] filter_1: 2 tasks ...\n[1/1] filter_1: done in ")
    assert "language " in quiet.stdout and "language_score_below_threshold" in quiet.stdout  # the table
    assert "Launching pipeline for rank=1" in (tmp_path / "quiet" / "curate.log").read_text()
    verbose = curate("verbose", "verbose=true")
    assert verbose.returncode == 0 and "Launching pipeline for rank=1" in verbose.stderr


def test_dedup_pairs_each_task_with_its_own_documents_when_a_task_keeps_nothing(tmp_path: Path) -> None:
    """A task whose documents are all filtered out writes no file. The dedup stage must still read each task's
    own documents with that task's removal list: paired by position in the folder instead, the second task's list
    would remove the third task's documents and keep the copies. Nor may a file an interrupted run of that task
    left be read back (its documents have no signatures: they would pass the dedup unchecked)."""
    src = tmp_path / "corpus"
    src.mkdir()
    for name, records in {
        "a.jsonl": [{"text": stub, "id": f"stub{i}"} for i, stub in enumerate(STUBS)],  # every one removed
        "b.jsonl": [{"text": t, "id": f"b{i}"} for i, t in enumerate(PROSE[:6])]
        + [{"text": PROSE[0], "id": "b_copy"}],
        "c.jsonl": [{"text": t, "id": f"c{i}"} for i, t in enumerate(PROSE[6:12])]
        + [{"text": PROSE[6], "id": "c_copy"}],
    }.items():
        (src / name).write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    declaration = tmp_path / "small.yaml"
    declaration.write_text(SMALL_PIPELINE)
    out = tmp_path / "out"
    stale = out / "work" / "stage_1" / "00000.jsonl.gz"  # as an interrupted earlier run of the first task left it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(gzip.compress(orjson.dumps({"text": PROSE[6], "id": "stale"}) + b"\n"))
    stats = run_pipeline(str(declaration), src, out, workers=1)  # one task per file
    assert not list((out / "work" / "stage_1").glob("00000*"))  # the first task kept nothing, and left nothing
    before = {r["id"] for r in read_gz(out / "work" / "stage_1")}
    kept = {r["id"] for r in read_gz(out / "kept")}
    copies = [{"b0", "b_copy"}, {"c0", "c_copy"}]
    assert set().union(*copies) <= before
    assert stats.step("minhash").removed == 2
    assert all(len(kept & pair) == 1 for pair in copies)
    assert kept == before - set().union(*copies) | (kept & set().union(*copies))
