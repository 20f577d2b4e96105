"""Real text for the curation tests (Python's own reference topics and str's method summaries, read at test time),
a small pipeline that exercises reading, filtering and MinHash, and a reader of the gzipped JSONL a run writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
from pydoc_data.topics import topics

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
