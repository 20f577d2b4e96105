"""The stats: every document counted once (kept, removed with its reason, or rejected), as stats.json and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from slmtrain.data.curate import run_pipeline
from tests.data.curate.corpus import PROSE, SMALL_PIPELINE, STUBS, read_gz


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
