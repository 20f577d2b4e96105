"""Token shards: curated JSONL/Parquet text in, memmap-able token arrays out, and the reader the trainer uses.

Layout of a shards folder::

    meta.json                 tokenizer sha256, vocab size, dtype, EOS id, per split: tokens, docs, shard list
    train/NAME.bin            flat token ids (uint16 when every id fits, else uint32), each document then EOS
    train/NAME.idx.npy        int64 document boundaries: doc i is tokens[idx[i]:idx[i+1]], idx[0] = 0
    val/...                   the same for held-out documents
    done/NAME.json            written last for each input file: its completion record (resume skips it)

One input file becomes one shard per split, written by one worker (files are encoded in parallel). A document
goes to ``val`` when the hash of its text falls below ``val_fraction``: deterministic whatever the worker count or
file order, and duplicate documents never straddle the split.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import multiprocessing
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from slmtrain.config import ConfigError, UserError, declared_names, require, to_dict
from slmtrain.tokenizer import MODEL_FILE, SPEC_FILE, TOKENIZERS_DIR, Tokenizer, load_spec, train_tokenizer

SPLITS = ("train", "val")
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # what read_texts reads: plain or gzip JSONL, Parquet (no zstd)
META_FILE = "meta.json"
SHARDS_FORMAT = "slmtrain-shards/1"
META_KEYS = ("tokenizer_sha256", "tokenizer_model", "vocab_size", "dtype", "eos_id", "splits")  # what readers need
ENCODE_BATCH_DOCS = 256
VERIFY_CHUNK_TOKENS = 1 << 24


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (0 .. vocab_size - 1) fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------------------------
# Reading curated text


@dataclass
class InputCounts:
    """What reading the input found; every line/document is either yielded or counted here with its reason."""

    documents: int = 0
    corrupt_lines: int = 0  # not JSON, or not valid UTF-8
    missing_text: int = 0  # no string `text` field
    empty_text: int = 0  # blank text: nothing to train on
    unreadable: list[str] = field(default_factory=list)  # "file: reason" for files that failed part-way or at once

    def add(self, other: InputCounts) -> None:
        self.documents += other.documents
        self.corrupt_lines += other.corrupt_lines
        self.missing_text += other.missing_text
        self.empty_text += other.empty_text
        self.unreadable += other.unreadable

    def as_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "corrupt_lines": self.corrupt_lines, "missing_text": self.missing_text,
                "empty_text": self.empty_text, "unreadable": list(self.unreadable)}


def find_input_files(path: str | Path) -> list[Path]:
    """A file, or every *.jsonl / *.jsonl.gz / *.parquet under a folder (under ``kept/`` for a curation output)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        return [path]
    root = path / "kept" if (path / "kept").is_dir() else path
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.name.endswith(INPUT_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise UserError(f"no {', '.join('*' + s for s in INPUT_SUFFIXES)} files under {root}")
    return files


def read_documents(paths: Sequence[str | Path]) -> list[str]:
    """Documents for perplexity (eval ``text=``) and retrieval (``index documents=``): .jsonl(.gz)/.parquet files
    give their ``text`` fields (bad lines are counted and reported as an error: a score on silently fewer documents
    would mislead); any other file (.txt, .md, ...) is one document."""
    documents: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"text file not found: {path}")
        if not path.name.endswith(INPUT_SUFFIXES):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not text.strip():
                raise UserError(f"{path}: empty file")
            documents.append(text)
            continue
        counts = InputCounts()
        texts = list(read_texts(path, counts))
        skipped = counts.corrupt_lines + counts.missing_text + len(counts.unreadable)
        if skipped or not texts:
            raise UserError(f"{path}: {len(texts)} documents read; {counts.corrupt_lines} corrupt lines, "
                            f"{counts.missing_text} without text, unreadable: {counts.unreadable or 'no'}")
        documents += texts
    return documents


def read_texts(file: Path, counts: InputCounts) -> Iterator[str]:
    """The non-blank ``text`` of each document of a JSONL(.gz) or Parquet file; problems are counted, not raised.

    A file that breaks part-way (truncated gzip, unreadable Parquet) keeps the documents read before the break.
    """
    try:
        texts = _parquet_texts(file) if file.name.endswith(".parquet") else _jsonl_texts(file, counts)
        for text in texts:
            if not isinstance(text, str):
                counts.missing_text += 1
            elif not text.strip():
                counts.empty_text += 1
            else:
                counts.documents += 1
                yield text
    except (OSError, EOFError, zlib.error, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid, bad gzip
        counts.unreadable.append(f"{file}: {type(e).__name__}: {e}")


def _jsonl_texts(file: Path, counts: InputCounts) -> Iterator[Any]:
    with (gzip.open(file, "rb") if file.name.endswith(".gz") else open(file, "rb")) as lines:
        for number, line in enumerate(lines):
            if number == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
            if not line.strip():
                continue
            record = _json_record(line)
            if record is _CORRUPT:
                counts.corrupt_lines += 1
                continue
            yield record.get("text") if isinstance(record, dict) else None


_CORRUPT = object()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_record(line: bytes) -> Any:
    """The line's JSON value, or _CORRUPT. orjson first (fast; it rejects invalid UTF-8 too); Python's json for what
    only orjson refuses, integers wider than 64 bits, still without NaN/Infinity, which are not JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _CORRUPT


def _parquet_texts(file: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    if "text" not in parquet.schema_arrow.names:
        raise ValueError("no 'text' column")
    for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
        yield from batch.column(0).to_pylist()


def iter_corpus(files: Iterable[Path], counts: InputCounts | None = None) -> Iterator[str]:
    counts = InputCounts() if counts is None else counts
    for file in files:
        yield from read_texts(file, counts)


# --------------------------------------------------------------------------------------------------------------
# Writing


def is_val_document(text: str, val_fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def shard_name(source: Path) -> str:
    """Readable and unique: the file's stem plus a hash of its full path."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name.split(".")[0])[:40]
    return f"{stem}-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class _ShardJob:
    source: Path
    output: Path
    val_fraction: float
    tokenizer_sha256: str
    token_bytes: int

    @property
    def name(self) -> str:
        return shard_name(self.source)

    @property
    def done_file(self) -> Path:
        return self.output / "done" / f"{self.name}.json"

    def fingerprint(self) -> dict[str, Any]:
        """What the finished shard depends on: a change in any of these means it must be rewritten."""
        stat = self.source.stat()
        return {"source": str(self.source.resolve()), "source_bytes": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns, "val_fraction": self.val_fraction,
                "tokenizer_sha256": self.tokenizer_sha256}

    def finished_record(self) -> dict[str, Any] | None:
        """The done record when it is readable, for this input and tokenizer, and its shard files are there at the
        sizes it records; otherwise None, and the file is encoded again."""
        try:
            record = json.loads(self.done_file.read_text())
            if record["fingerprint"] != self.fingerprint():
                return None
            for split in SPLITS:
                tokens = record["splits"][split]["tokens"]
                bin_file = self.output / split / f"{self.name}.bin"
                if tokens and not (bin_file.is_file() and bin_file.stat().st_size == tokens * self.token_bytes
                                   and bin_file.with_name(f"{self.name}.idx.npy").is_file()):
                    return None
            return record
        except (OSError, ValueError, KeyError, TypeError):  # missing, or an unreadable record: not finished
            return None


class _SplitWriter:
    """Appends documents (+EOS) to ``NAME.bin.partial``; ``finish`` renames into place (atomic per file)."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, eos_id: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.bin_file, self.idx_file = folder / f"{name}.bin", folder / f"{name}.idx.npy"
        self.partial = folder / f"{name}.bin.partial"
        self.handle = open(self.partial, "wb")
        self.dtype, self.eos_id = dtype, eos_id
        self.boundaries: list[int] = [0]
        self.max_id = -1

    def append(self, documents: list[list[int]]) -> None:
        if not documents:
            return
        flat = np.fromiter(itertools.chain.from_iterable((*ids, self.eos_id) for ids in documents), dtype=np.int64)
        self.max_id = max(self.max_id, int(flat.max()))
        self.handle.write(flat.astype(self.dtype).tobytes())
        for ids in documents:
            self.boundaries.append(self.boundaries[-1] + len(ids) + 1)

    def finish(self) -> dict[str, Any]:
        self.handle.close()
        tokens = self.boundaries[-1]
        if tokens == 0:  # np.memmap cannot map an empty file: an empty split writes no shard
            self.partial.unlink()
            self.bin_file.unlink(missing_ok=True)
            self.idx_file.unlink(missing_ok=True)
        else:
            partial_idx = self.idx_file.with_name(self.idx_file.name + ".partial.npy")
            np.save(partial_idx, np.asarray(self.boundaries, dtype=np.int64))
            partial_idx.replace(self.idx_file)
            self.partial.replace(self.bin_file)
        return {"tokens": tokens, "docs": len(self.boundaries) - 1, "max_id": self.max_id}


_worker_tokenizer: Tokenizer | None = None


def _init_worker(model_file: Path) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_file)


def _write_shard(job: _ShardJob) -> dict[str, Any]:
    """Encode one input file into one shard per split; the done record is written last."""
    tokenizer = _worker_tokenizer
    assert tokenizer is not None, "_init_worker was not called"
    started = time.perf_counter()
    fingerprint = job.fingerprint()  # before reading: a file changed mid-read is then redone on the next run
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: _SplitWriter(job.output / split, job.name, dtype, tokenizer.eos_id) for split in SPLITS}
    counts = InputCounts()
    texts = read_texts(job.source, counts)
    while batch := list(itertools.islice(texts, ENCODE_BATCH_DOCS)):
        encoded = tokenizer.encode_batch(batch)
        is_val = [is_val_document(text, job.val_fraction) for text in batch]
        writers["val"].append([ids for ids, val in zip(encoded, is_val) if val])
        writers["train"].append([ids for ids, val in zip(encoded, is_val) if not val])
    record = {"fingerprint": fingerprint, "name": job.name, "input": counts.as_dict(),
              "splits": {split: writer.finish() for split, writer in writers.items()},
              "seconds": time.perf_counter() - started}
    job.done_file.parent.mkdir(parents=True, exist_ok=True)
    partial = job.done_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(job.done_file)
    return record


def write_shards(tokenizer: Tokenizer, files: list[Path], output: Path, workers: int = 1,
                 val_fraction: float = 0.01) -> dict[str, Any]:
    """Encode ``files`` into shards under ``output`` (files in parallel), skipping files already done; meta.json last."""
    require(workers >= 1, "workers", "must be at least 1")
    require(0.0 <= val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    token_bytes = token_dtype(tokenizer.vocab_size).itemsize
    jobs = [_ShardJob(file, output, val_fraction, tokenizer.sha256, token_bytes) for file in files]
    if len({job.name for job in jobs}) != len(jobs):
        raise UserError("two input files map to the same shard name")
    records = {job.name: job.finished_record() for job in jobs}
    todo = [job for job in jobs if records[job.name] is None]
    started = time.perf_counter()
    if workers == 1 or len(todo) <= 1:
        _init_worker(tokenizer.model_file)
        records.update((job.name, _write_shard(job)) for job in todo)
    else:
        # spawn, not fork: the parent may hold threads (torch, sentencepiece) that fork would copy mid-flight.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(todo)), _init_worker, (tokenizer.model_file,)) as pool:
            for record in pool.imap_unordered(_write_shard, todo):
                records[record["name"]] = record
    seconds = time.perf_counter() - started
    new_tokens = sum(records[job.name]["splits"][s]["tokens"] for job in todo for s in SPLITS)
    meta = _build_meta(tokenizer, jobs, records, val_fraction)
    if meta["input"]["documents"] == 0:  # shards of nothing would fail only later, in training
        counts = meta["input"]
        raise UserError(f"no documents to tokenize in {len(files)} input file(s): {counts['corrupt_lines']} corrupt "
                        f"lines, {counts['missing_text']} without text, {counts['empty_text']} empty, "
                        f"{len(counts['unreadable'])} unreadable files{': ' if counts['unreadable'] else ''}"
                        f"{'; '.join(counts['unreadable'][:3])}")
    partial = output / f"{META_FILE}.partial"
    partial.write_text(json.dumps(meta, indent=1))
    partial.replace(output / META_FILE)
    return {"output": str(output), "meta": str(output / META_FILE), "shards_written": len(todo),
            "shards_skipped": len(jobs) - len(todo), "tokens_encoded": new_tokens, "encode_seconds": seconds,
            "tokens_per_second": new_tokens / seconds if todo and seconds > 0 else 0.0,
            **{split: {k: meta["splits"][split][k] for k in ("tokens", "docs")} for split in SPLITS},
            "input": meta["input"]}


def _build_meta(tokenizer: Tokenizer, jobs: list[_ShardJob], records: dict[str, Any],
                val_fraction: float) -> dict[str, Any]:
    counts = InputCounts()
    splits: dict[str, Any] = {}
    for split in SPLITS:
        shards = [{"name": job.name, **records[job.name]["splits"][split]} for job in jobs
                  if records[job.name]["splits"][split]["tokens"] > 0]
        splits[split] = {"tokens": sum(s["tokens"] for s in shards), "docs": sum(s["docs"] for s in shards),
                         "shards": shards}
    for job in jobs:
        counts.add(InputCounts(**records[job.name]["input"]))
    return {"format": SHARDS_FORMAT, "tokenizer_sha256": tokenizer.sha256,
            "tokenizer_model": str(tokenizer.model_file.resolve()), "vocab_size": tokenizer.vocab_size,
            "dtype": token_dtype(tokenizer.vocab_size).name, "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id,
            "val_fraction": val_fraction, "splits": splits, "input": counts.as_dict(),
            "sources": [str(job.source.resolve()) for job in jobs]}


def prepare_shards(tokenizer: str | Path, input: str | Path, output: str | Path, workers: int = 1,
                   val_fraction: float = 0.01, retrain: bool = False,
                   tokenizer_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the tokenizer on a sample of the input when not trained yet (or ``retrain``), then write shards.

    ``tokenizer`` is a spec name (``tokenizers/NAME.yaml``), a spec .yaml path, or a trained tokenizer folder.
    The trained model lives in ``tokenizer_dir`` (default ``OUTPUT/tokenizer``: shards carry their tokenizer).
    """
    files = find_input_files(input)
    trained_folder = Path(tokenizer)
    if (trained_folder / MODEL_FILE).is_file() and tokenizer_dir is None and not retrain:
        folder = trained_folder
    else:
        folder = Path(tokenizer_dir) if tokenizer_dir else Path(output) / "tokenizer"
    if (trained_folder.is_dir() and not (trained_folder / MODEL_FILE).is_file()
            and str(tokenizer) not in declared_names(TOKENIZERS_DIR)):
        raise UserError(f"tokenizer={tokenizer}: a folder without {MODEL_FILE}, so not a trained tokenizer; give a "
                        "trained tokenizer's folder, a spec name (tokenizers/NAME.yaml) or a spec .yaml file")
    trained = retrain or not (folder / MODEL_FILE).is_file()
    if trained:
        spec = load_spec(tokenizer)
        train_tokenizer(spec, iter_corpus(files), folder)
    elif folder != trained_folder:
        # A tokenizer trained from another spec (or an earlier version of it) would silently disagree with it.
        if _saved_spec(folder) != to_dict(load_spec(tokenizer)):
            raise UserError(f"{folder} holds a tokenizer not trained from the {Path(str(tokenizer)).stem} spec: "
                            "pass retrain=true to train it again (shards written with the old one must then be "
                            "written again: training refuses them)")
    stats = write_shards(Tokenizer.load(folder), files, Path(output), workers, val_fraction)
    return {**stats, "tokenizer_dir": str(folder), "tokenizer_trained": trained}


def _saved_spec(folder: Path) -> dict[str, Any] | None:
    """The spec a tokenizer folder was trained from (its spec.json), or None when it records none readably."""
    try:
        return json.loads((folder / SPEC_FILE).read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------------------
# Reading shards


@dataclass
class TokenSplit:
    """One split as a sequence of tokens spanning its shards; ``read`` copies a window out as int64."""

    tokens: list[np.memmap]  # one flat memmap per shard, in meta order
    shard_starts: np.ndarray  # global offset of each shard, plus the total at the end
    doc_starts: np.ndarray  # global token offset of every document start
    vocab_size: int
    eos_id: int
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"read({start}, {length}) outside the split's {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.shard_starts[shard])
            piece = self.tokens[shard][offset: offset + length - filled]
            out[filled: filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


def load_meta(shards_dir: str | Path) -> dict[str, Any]:
    """A shards folder's meta.json, checked for the fields every reader relies on."""
    meta_file = Path(shards_dir) / META_FILE
    if not meta_file.is_file():
        raise UserError(f"{meta_file} not found: not a finished shards folder (run launch/tokenize_data.py)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_file}: unreadable ({e}); write the shards again") from None
    missing = [key for key in META_KEYS if key not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing or meta.get("format") != SHARDS_FORMAT or meta["dtype"] not in ("uint16", "uint32"):
        what = f"missing {', '.join(missing)}" if missing else f"format {meta.get('format')!r}, dtype {meta['dtype']!r}"
        raise UserError(f"{meta_file}: not a {SHARDS_FORMAT} meta.json ({what}); write the shards again")
    return meta


def shards_tokenizer(meta: dict[str, Any], shards_dir: str | Path) -> Tokenizer:
    """The tokenizer the shards were written with: the file meta.json names, refused unless its sha256 is still the
    one recorded (a tokenizer folder trained again since would decode, and train, the ids as other text)."""
    model_file = Path(meta["tokenizer_model"])
    if not model_file.is_file():
        raise UserError(f"{shards_dir}/{META_FILE} names tokenizer {model_file}, which does not exist")
    tokenizer = Tokenizer(model_file)
    if tokenizer.sha256 != meta["tokenizer_sha256"]:
        raise UserError(f"{model_file} changed after {shards_dir} was written with it (sha256 {tokenizer.sha256[:12]}, "
                        f"recorded {meta['tokenizer_sha256'][:12]}; trained again?): write the shards again")
    return tokenizer


def open_split(shards_dir: str | Path, split: str) -> TokenSplit:
    """Memory-map a split, checking cheaply (sizes, recorded max id) that it matches its metadata."""
    shards_dir = Path(shards_dir)
    meta = load_meta(shards_dir)
    if split not in meta["splits"]:
        raise ConfigError("split", f"invalid value {split!r}; valid choices: {', '.join(meta['splits'])}")
    vocab_size, dtype = meta["vocab_size"], np.dtype(meta["dtype"])
    tokens: list[np.memmap] = []
    doc_starts: list[np.ndarray] = []
    shard_starts = [0]
    for shard in meta["splits"][split]["shards"]:
        bin_file = shards_dir / split / f"{shard['name']}.bin"
        if shard["max_id"] >= vocab_size:
            raise UserError(f"{bin_file}: token id {shard['max_id']} >= vocab_size {vocab_size}")
        if not bin_file.is_file() or bin_file.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise UserError(f"{bin_file}: missing or not {shard['tokens']} {dtype.name} tokens as meta.json says")
        idx_file = shards_dir / split / f"{shard['name']}.idx.npy"
        try:
            boundaries = np.load(idx_file)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{idx_file}: unreadable document index ({e})") from None
        # every document holds at least its EOS, so the boundaries rise strictly from 0 to the token count
        if (boundaries.dtype != np.int64 or boundaries.ndim != 1 or len(boundaries) != shard["docs"] + 1
                or boundaries[0] != 0 or boundaries[-1] != shard["tokens"] or np.any(np.diff(boundaries) < 1)):
            raise UserError(f"{idx_file}: document index does not match meta.json")
        tokens.append(np.memmap(bin_file, dtype=dtype, mode="r"))
        doc_starts.append(boundaries[:-1] + shard_starts[-1])
        shard_starts.append(shard_starts[-1] + shard["tokens"])
    return TokenSplit(tokens=tokens, shard_starts=np.asarray(shard_starts, dtype=np.int64),
                      doc_starts=np.concatenate(doc_starts) if doc_starts else np.zeros(0, dtype=np.int64),
                      vocab_size=vocab_size, eos_id=meta["eos_id"], meta=meta)


def verify_split(split: TokenSplit) -> None:
    """Full scan: every id < vocab_size and every document ends with EOS. Raises UserError naming the shard."""
    doc_ends = np.append(split.doc_starts[1:], len(split)) - 1 if len(split.doc_starts) else split.doc_starts
    for index, shard in enumerate(split.tokens):
        first, end = int(split.shard_starts[index]), int(split.shard_starts[index + 1])
        for chunk_start in range(0, len(shard), VERIFY_CHUNK_TOKENS):
            largest = int(shard[chunk_start: chunk_start + VERIFY_CHUNK_TOKENS].max())
            if largest >= split.vocab_size:
                raise UserError(f"{shard.filename}: token id {largest} >= vocab_size {split.vocab_size}")
        local_ends = doc_ends[(doc_ends >= first) & (doc_ends < end)] - first
        if not np.all(shard[local_ends] == split.eos_id):
            raise UserError(f"{shard.filename}: a document does not end with EOS (shard or index corrupt)")


def open_datatrove(folder: str | Path, vocab_size: int, eos_id: int) -> TokenSplit:
    """Datatrove's DocumentTokenizer output as a TokenSplit: ``*.ds`` little-endian tokens, ``*.ds.index`` uint64
    document ends, ``*.ds.metadata`` whose first line is ``TOKENIZER|TOKEN_BYTES``. Datatrove records no vocabulary
    size, so the caller gives it; run :func:`verify_split` for the full id check."""
    files = sorted(Path(folder).glob("*.ds"))
    if not files:
        raise UserError(f"no datatrove *.ds token files in {folder}")
    tokens: list[np.memmap] = []
    doc_starts: list[np.ndarray] = []
    shard_starts = [0]
    tokenizers = set()
    for file in files:
        metadata, index = file.with_name(file.name + ".metadata"), file.with_name(file.name + ".index")
        if not metadata.is_file() or not index.is_file():
            raise UserError(f"{file}: datatrove .metadata or .index file missing")
        tokenizer_name, _, token_bytes = (metadata.read_text(errors="replace").splitlines() or [""])[0].rpartition("|")
        if token_bytes not in ("2", "4"):
            raise UserError(f"{metadata}: first line is not TOKENIZER|TOKEN_BYTES with 2 or 4 bytes a token")
        tokenizers.add(tokenizer_name)
        dtype = np.dtype({"2": "<u2", "4": "<u4"}[token_bytes])
        ends = np.fromfile(index, dtype="<u8").astype(np.int64)
        if (not len(ends) or ends[-1] * dtype.itemsize != file.stat().st_size or ends[0] < 1
                or np.any(np.diff(ends) < 1)):
            raise UserError(f"{file}: size does not match its .index, or the index does not rise")
        tokens.append(np.memmap(file, dtype=dtype, mode="r"))
        doc_starts.append(np.concatenate([[0], ends[:-1]]) + shard_starts[-1])
        shard_starts.append(shard_starts[-1] + int(ends[-1]))
    meta = {"format": "datatrove", "tokenizers": sorted(tokenizers), "sources": [str(f) for f in files]}
    return TokenSplit(tokens=tokens, shard_starts=np.asarray(shard_starts, dtype=np.int64),
                      doc_starts=np.concatenate(doc_starts), vocab_size=vocab_size, eos_id=eos_id, meta=meta)
