"""The stage graph: the MinHash stages pair each task with its own documents, and never read back what an
interrupted run left."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson

from slmtrain.data.curate import run_pipeline
from tests.data.curate.corpus import PROSE, SMALL_PIPELINE, STUBS, read_gz


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
