"""The corpus most curation tests run on."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.data.curate.corpus import PROSE, STUBS


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
