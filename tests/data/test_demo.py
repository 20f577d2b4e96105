from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from slmtrain.data import demo


def test_demo_documents_are_real_mixed_text(tmp_path: Path) -> None:
    folder = demo.write_demo_documents(tmp_path / "src", max_docs=400)
    records = [orjson.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    assert len(records) == 400
    assert all(r["text"].strip() and r["id"] and r["metadata"]["source"] for r in records)
    sources = Counter(r["metadata"]["source"] for r in records)
    assert sources["pydoc_topics"] > 50 and sources["stdlib"] > 0  # reference manual first, then docstrings
    lengths = sorted(len(r["text"]) for r in records)
    assert lengths[0] < 200 and lengths[-1] > 20_000  # stubs and long pages: filters have work
    assert len({r["id"] for r in records}) == len(records)


def test_demo_is_deterministic_and_stops_at_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "DOCS_PER_FILE", 40)
    first = demo.write_demo_documents(tmp_path / "a", max_docs=100)
    second = demo.write_demo_documents(tmp_path / "b", max_docs=100)
    assert len(list(first.glob("*.jsonl"))) == 3
    assert [p.read_bytes() for p in sorted(first.glob("*.jsonl"))] == [p.read_bytes() for p in sorted(second.glob("*.jsonl"))]
    small = demo.write_demo_documents(tmp_path / "c", target_chars=10_000)
    lines = [line for p in small.glob("*.jsonl") for line in p.read_bytes().splitlines()]
    assert sum(len(orjson.loads(line)["text"]) for line in lines) >= 10_000
    assert len(lines) == 40  # stopped after the first file, far before the whole corpus
