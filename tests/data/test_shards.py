"""Token shards: lossless EOS-separated documents, deterministic val split, resume, validation, bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pydoc_data.topics
import pytest

from slmtrain.config import UserError
from tests.output import diagnostics
from tests.paths import REPO_ROOT
from slmtrain.data.shards import (
    InputCounts, _SplitWriter, find_input_files, is_val_document, load_meta, open_datatrove, open_split,
    prepare_shards, read_texts, shards_tokenizer, token_dtype, verify_split, write_shards,
)
from slmtrain.tokenizer import Tokenizer, TokenizerSpec, train_tokenizer

# Real text: each paragraph of the Python docs' topics is a document (a few thousand, some duplicated).
DOCS = [p for topic in pydoc_data.topics.topics.values() for p in topic.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(TokenizerSpec(vocab_size=1000, sample_sentences=20000), DOCS,
                           tmp_path_factory.mktemp("tok"))


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps({"text": d, "id": i}) + b"\n" for i, d in enumerate(docs))
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    """A curation output: kept/ holds the documents in JSONL, gzipped JSONL and Parquet files."""
    kept = tmp_path / "curated" / "kept"
    write_jsonl(kept / "a.jsonl", DOCS[0::3])
    write_jsonl(kept / "b.jsonl.gz", DOCS[1::3])
    pq.write_table(pa.table({"text": DOCS[2::3]}), kept / "c.parquet")
    write_jsonl(tmp_path / "curated" / "removed" / "x.jsonl", ["must not be read"])
    return tmp_path / "curated"


def split_documents(shards: Path, split: str, tokenizer: Tokenizer) -> list[str]:
    data = open_split(shards, split)
    ends = [*data.doc_starts[1:], len(data)]
    docs = []
    for start, end in zip(data.doc_starts, ends):
        ids = data.read(int(start), int(end - start))
        assert ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
        docs.append(tokenizer.decode(ids[:-1]))
    return docs


def test_shards_hold_every_document_once_split_by_hash(tokenizer: Tokenizer, curated: Path, tmp_path: Path) -> None:
    stats = write_shards(tokenizer, find_input_files(curated), tmp_path / "s1", workers=1, val_fraction=0.1)
    train, val = (split_documents(tmp_path / "s1", s, tokenizer) for s in ("train", "val"))
    assert sorted(train + val) == sorted(DOCS)  # lossless, nothing lost or doubled, removed/ not read
    assert set(val) == {d for d in DOCS if is_val_document(d, 0.1)} and not set(train) & set(val)
    assert 0.05 < len(val) / len(DOCS) < 0.15
    meta = json.loads((tmp_path / "s1" / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == tokenizer.sha256 and meta["vocab_size"] == 1000 and meta["dtype"] == "uint16"
    assert stats["train"]["docs"] == len(train) and stats["tokens_per_second"] > 0
    assert meta["splits"]["train"]["tokens"] == len(open_split(tmp_path / "s1", "train"))
    assert len(meta["sources"]) == 3 and meta["input"]["documents"] == len(DOCS)
    # Two workers write the same bytes: the split depends on the text, not on who encoded it.
    write_shards(tokenizer, find_input_files(curated), tmp_path / "s2", workers=2, val_fraction=0.1)
    for split in ("train", "val"):
        one, two = open_split(tmp_path / "s1", split), open_split(tmp_path / "s2", split)
        assert np.array_equal(one.read(0, len(one)), two.read(0, len(two)))
        assert np.array_equal(one.doc_starts, two.doc_starts)


def test_read_spans_shard_boundaries(tokenizer: Tokenizer, curated: Path, tmp_path: Path) -> None:
    write_shards(tokenizer, find_input_files(curated), tmp_path, val_fraction=0.0)
    data = open_split(tmp_path, "train")
    assert len(data.tokens) == 3 and len(open_split(tmp_path, "val")) == 0
    everything = np.concatenate([np.asarray(t, dtype=np.int64) for t in data.tokens])
    boundary = int(data.shard_starts[1])
    assert np.array_equal(data.read(boundary - 5, 10), everything[boundary - 5: boundary + 5])
    assert data.read(0, 3).dtype == np.int64 and len(data) == len(everything)
    with pytest.raises(IndexError):
        data.read(len(data) - 2, 3)
    verify_split(data)


def test_dtype_follows_vocab_size(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    writer = _SplitWriter(tmp_path, "big", token_dtype(200_000), eos_id=2)
    writer.append([[70_000, 199_999], [5]])
    assert writer.finish() == {"tokens": 5, "docs": 2, "max_id": 199_999}
    assert np.fromfile(tmp_path / "big.bin", dtype=np.uint32).tolist() == [70_000, 199_999, 2, 5, 2]
    assert np.load(tmp_path / "big.idx.npy").tolist() == [0, 3, 5]


def test_rerun_skips_finished_shards(tokenizer: Tokenizer, curated: Path, tmp_path: Path) -> None:
    files = find_input_files(curated)
    first = write_shards(tokenizer, files, tmp_path, val_fraction=0.1)
    bins = sorted((tmp_path / "train").glob("*.bin"))
    mtimes = [p.stat().st_mtime_ns for p in bins]
    again = write_shards(tokenizer, files, tmp_path, val_fraction=0.1)
    assert (again["shards_written"], again["shards_skipped"]) == (0, 3)
    assert [p.stat().st_mtime_ns for p in bins] == mtimes and again["train"] == first["train"]
    # A changed input file, or one whose shard never finished (no done record), is redone; the others are not.
    write_jsonl(files[0], DOCS[0::3][:10])
    next(iter((tmp_path / "done").glob("c-*.json"))).unlink()
    third = write_shards(tokenizer, files, tmp_path, val_fraction=0.1)
    assert (third["shards_written"], third["shards_skipped"]) == (2, 1)
    assert third["input"]["documents"] == 10 + len(DOCS[1::3]) + len(DOCS[2::3])
    # Another val_fraction changes every shard.
    assert write_shards(tokenizer, files, tmp_path, val_fraction=0.2)["shards_written"] == 3
    # A done record is trusted only with its files there at their sizes, and only when it can be read.
    next(iter((tmp_path / "train").glob("a-*.bin"))).unlink()
    next(iter((tmp_path / "done").glob("b-*.json"))).write_text('{"fingerprint": ')
    fourth = write_shards(tokenizer, files, tmp_path, val_fraction=0.2)
    assert (fourth["shards_written"], fourth["shards_skipped"]) == (2, 1)
    verify_split(open_split(tmp_path, "train"))


def test_out_of_vocab_and_truncated_shards_are_detected(tokenizer: Tokenizer, curated: Path, tmp_path: Path) -> None:
    write_shards(tokenizer, find_input_files(curated), tmp_path, val_fraction=0.0)
    shard = sorted((tmp_path / "train").glob("*.bin"))[0]
    tokens = np.memmap(shard, dtype=np.uint16, mode="r+")
    tokens[7] = 4000  # beyond vocab_size 1000, still a valid uint16
    tokens.flush()
    with pytest.raises(UserError, match="token id 4000 >= vocab_size 1000"):
        verify_split(open_split(tmp_path, "train"))
    meta_file = tmp_path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["splits"]["train"]["shards"][0]["max_id"] = 4000
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="token id 4000 >= vocab_size 1000"):
        open_split(tmp_path, "train")  # the cheap check on open, from the recorded maximum
    meta["splits"]["train"]["shards"][0]["max_id"] = 999
    meta_file.write_text(json.dumps(meta))
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-2])
    with pytest.raises(UserError, match="missing or not"):
        open_split(tmp_path, "train")
    shard.write_bytes(intact)
    with pytest.raises(UserError, match="not a finished shards folder"):
        open_split(tmp_path / "train", "train")
    index = shard.with_name(shard.name.replace(".bin", ".idx.npy"))
    boundaries = np.load(index)
    np.save(index, boundaries[[0, 2, 1, *range(3, len(boundaries))]])  # two documents swapped: not rising
    with pytest.raises(UserError, match="document index does not match"):
        open_split(tmp_path, "train")
    index.write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable document index"):
        open_split(tmp_path, "train")
    for broken, reason in [("{", "unreadable"), ("{}", "missing tokenizer_sha256"),
                           (json.dumps({**meta, "dtype": "blah"}), "dtype 'blah'")]:
        meta_file.write_text(broken)
        with pytest.raises(UserError, match=f"meta.json: .*{reason}"):
            open_split(tmp_path, "train")


def test_bad_input_is_counted_and_the_rest_kept(tokenizer: Tokenizer, tmp_path: Path) -> None:
    good = DOCS[:20]
    lines = [orjson.dumps({"text": d}) for d in good[:10]] + [
        b'{"text": "unterminated', b'{"text": "bad utf-8 \xff\xfe"}', b'["not", "a", "record"]', b'{"title": "no text"}',
        b'{"text": 42}', b'{"text": "   "}', b"",
    ] + [orjson.dumps({"text": d}) for d in good[10:]]
    bad = tmp_path / "in" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_bytes(b"\n".join(lines) + b"\n")
    truncated = tmp_path / "in" / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(b"".join(orjson.dumps({"text": d}) + b"\n" for d in DOCS[20:400]))[:3000])
    counts = InputCounts()
    texts = [t for f in find_input_files(tmp_path / "in") for t in read_texts(f, counts)]
    assert texts[:20] == good and len(texts) > 20  # the truncated file keeps what it held before the break
    assert (counts.corrupt_lines, counts.missing_text, counts.empty_text) == (2, 3, 1)
    assert len(counts.unreadable) == 1 and "truncated.jsonl.gz" in counts.unreadable[0]
    assert counts.documents == len(texts)
    stats = write_shards(tokenizer, find_input_files(tmp_path / "in"), tmp_path / "out", val_fraction=0.0)
    assert stats["input"]["corrupt_lines"] == 2 and stats["train"]["docs"] == len(texts)
    lenient = tmp_path / "lenient" / "x.jsonl"
    lenient.parent.mkdir()
    lenient.write_bytes(b'\xef\xbb\xbf{"text": "after a BOM"}\n{"text": "a wide id", "id": 1' + b"0" * 30
                        + b'}\n{"text": "NaN is no JSON", "x": NaN}\n')
    counts = InputCounts()
    assert list(read_texts(lenient, counts)) == ["after a BOM", "a wide id"] and counts.corrupt_lines == 1
    nothing = tmp_path / "nothing" / "x.jsonl"
    nothing.parent.mkdir()
    nothing.write_bytes(b'{"text": "  "}\nnot json\n')
    with pytest.raises(UserError, match="no documents to tokenize in 1 input file.*1 corrupt lines.*1 empty"):
        write_shards(tokenizer, [nothing], tmp_path / "out_nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.jsonl"):
        find_input_files(tmp_path / "empty")
    with pytest.raises(UserError, match="input not found"):
        find_input_files(tmp_path / "missing")


def test_prepare_shards_trains_once_then_reuses(curated: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text("vocab_size: 800\nsample_sentences: 5000\n")
    common = dict(tokenizer=spec, input=curated, tokenizer_dir=tmp_path / "tok", val_fraction=0.05)
    first = prepare_shards(output=tmp_path / "out", **common)
    assert first["tokenizer_trained"] and Tokenizer.load(tmp_path / "tok").vocab_size == 800
    second = prepare_shards(output=tmp_path / "out", **common)
    assert not second["tokenizer_trained"] and second["shards_skipped"] == 3
    assert open_split(tmp_path / "out", "val").meta["val_fraction"] == 0.05
    spec.write_text("vocab_size: 900\nsample_sentences: 5000\n")  # the spec changed since training
    with pytest.raises(UserError, match="not trained from the tiny spec: pass retrain=true"):
        prepare_shards(output=tmp_path / "out2", **common)
    assert prepare_shards(output=tmp_path / "out2", retrain=True, **common)["tokenizer_trained"]
    # The shards written with the folder's old tokenizer are refused now, not decoded (or trained on) as other text.
    assert shards_tokenizer(load_meta(tmp_path / "out2"), tmp_path / "out2").vocab_size == 900
    with pytest.raises(UserError, match="changed after .*out was written with it"):
        shards_tokenizer(load_meta(tmp_path / "out"), tmp_path / "out")
    (tmp_path / "tok" / "spec.json").unlink()  # a tokenizer that records no spec is not taken for this spec's
    with pytest.raises(UserError, match="not trained from the tiny spec"):
        prepare_shards(output=tmp_path / "out3", **common)
    (tmp_path / "no_model").mkdir()
    with pytest.raises(UserError, match="a folder without tokenizer.model"):
        prepare_shards(tmp_path / "no_model", curated, tmp_path / "out4")


def test_launch_script(curated: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text("vocab_size: 800\nsample_sentences: 5000\n")
    env = {**os.environ, "PYTHONPATH": ""}
    command = [sys.executable, str(REPO_ROOT / "launch" / "tokenize_data.py"), f"tokenizer={spec}", f"input={curated}",
               f"output={tmp_path / 'out'}", f"tokenizer_dir={tmp_path / 'tok'}", "workers=2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trained now" in done.stdout and "3 written" in done.stdout
    assert open_split(tmp_path / "out", "train").meta["input"]["documents"] == len(DOCS)
    bad = subprocess.run([*command[:2], "tokenizer=demo"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and diagnostics(bad.stderr).startswith("error: input: required")
    missing = subprocess.run([*command[:3], f"input={tmp_path / 'nowhere'}", f"output={tmp_path / 'out2'}"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2
    assert diagnostics(missing.stderr) == f"error: input not found: {tmp_path / 'nowhere'}\n"


def test_reads_datatrove_tokenized_output(tokenizer: Tokenizer, curated: Path, tmp_path: Path) -> None:
    """Datatrove encodes with the exported tokenizer.json; its shards hold exactly the tokens ours do."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    hf = tokenizer.save_hf(tmp_path / "hf")
    jsonl = [f for f in find_input_files(curated) if ".jsonl" in f.name]
    pipeline = [JsonlReader(str(curated / "kept"), glob_pattern="*.jsonl*"),
                DocumentTokenizer(str(tmp_path / "dt"), tokenizer_name_or_path=str(hf / "tokenizer.json"),
                                  eos_token=tokenizer.processor.id_to_piece(tokenizer.eos_id), shuffle_documents=False)]
    LocalPipelineExecutor(pipeline=pipeline, tasks=1, logging_dir=str(tmp_path / "logs")).run()
    theirs = open_datatrove(tmp_path / "dt", tokenizer.vocab_size, tokenizer.eos_id)
    write_shards(tokenizer, jsonl, tmp_path / "ours", val_fraction=0.0)
    ours = open_split(tmp_path / "ours", "train")
    assert len(theirs) == len(ours) > 0
    assert np.array_equal(theirs.read(0, len(theirs)), ours.read(0, len(ours)))
    assert np.array_equal(theirs.doc_starts, ours.doc_starts)
    verify_split(theirs)
    with pytest.raises(UserError, match="no datatrove"):
        open_datatrove(tmp_path, tokenizer.vocab_size, tokenizer.eos_id)
    metadata = next(iter((tmp_path / "dt").glob("*.ds.metadata")))
    for broken in ("", "no separator", "name|8"):
        metadata.write_text(broken)
        with pytest.raises(UserError, match="not TOKENIZER|TOKEN_BYTES"):
            open_datatrove(tmp_path / "dt", tokenizer.vocab_size, tokenizer.eos_id)
