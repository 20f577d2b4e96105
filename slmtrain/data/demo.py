"""The embedded demo corpus: real English text present on every machine, no network needed.

Sources, in this order: the topics of Python's own reference manual (``pydoc_data.topics``), then the docstrings of
the standard library, then those of the installed packages. Docstrings are read with :mod:`ast` (nothing is
imported, so no package code runs). One document is one "help page": a module's docstring followed by the
docstrings of its top-level functions, or a class's docstring followed by those of its methods.

The material is naturally mixed: long tutorial-like pages, one-line stubs ("Return self."), code-heavy pages, and
exact or near duplicates (vendored copies of libraries, methods that copy a parent's docstring), so every filter
of the demo pipeline has real work.
"""

from __future__ import annotations

import ast
import itertools
import sysconfig
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

# Enough raw text that the demo pipeline keeps >= ~4 MB (>= ~1M tokens) after filtering and dedup.
DEMO_TARGET_CHARS = 6_000_000
DOCS_PER_FILE = 1_500  # several input files, so multi-worker runs have shards to split
MAX_SOURCE_BYTES = 1_000_000  # generated giant modules parse slowly and carry little prose
SKIPPED_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "lib2to3", "turtledemo"}


def write_demo_documents(out_dir: Path, max_docs: int | None = None, target_chars: int = DEMO_TARGET_CHARS) -> Path:
    """Write the demo documents as JSONL files (``text``, ``id``, ``metadata``) under ``out_dir``; return it.

    Stops after ``max_docs`` documents or once ``target_chars`` characters of text were written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("demo-*.jsonl"):
        old.unlink()
    all_documents = demo_documents()
    documents = itertools.islice(all_documents, max_docs)
    written_chars = 0
    try:
        for file_index in itertools.count():
            chunk = list(itertools.islice(documents, DOCS_PER_FILE))
            if not chunk:
                break
            with open(out_dir / f"demo-{file_index:05d}.jsonl", "wb") as f:
                for document in chunk:
                    f.write(orjson.dumps(document) + b"\n")
                    written_chars += len(document["text"])
            if written_chars >= target_chars:
                break
    finally:
        all_documents.close()  # stops the parsing workers
    return out_dir


def demo_documents() -> Iterator[dict]:
    """All demo documents, in a fixed order (reference topics, standard library, installed packages)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"text": topics[name].strip(), "id": f"pydoc/{name}", "metadata": {"source": "pydoc_topics"}}
    paths = sysconfig.get_paths()
    roots = [("stdlib", Path(paths["stdlib"])), ("site-packages", Path(paths["purelib"]))]
    files = [(source, root, path) for source, root in roots for path in _python_files(root)]
    # Parsing is the slow part: spread it over the cores, keep the order, stop early when the caller stops.
    with ProcessPoolExecutor(max_workers=2) as pool:
        try:
            for pages in pool.map(_help_pages, files, chunksize=32):
                yield from pages
        finally:
            pool.shutdown(cancel_futures=True)


def _python_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.py")
        if not SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]) and path.stat().st_size <= MAX_SOURCE_BYTES
    )


def _help_pages(item: tuple[str, Path, Path]) -> list[dict]:
    """The module page and the class pages of one source file (empty when it has no docstrings or won't parse)."""
    source, root, path = item
    relative = path.relative_to(root).with_suffix("")
    module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return []
    pages = []
    for owner, name in [(tree, module), *((n, f"{module}.{n.name}") for n in tree.body if isinstance(n, ast.ClassDef))]:
        text = _page_text(owner, name)
        if text:
            kind = "module" if owner is tree else "class"
            pages.append({"text": text, "id": f"{source}/{name}", "metadata": {"source": source, "kind": kind}})
    return pages


def _page_text(owner: ast.Module | ast.ClassDef, name: str) -> str:
    parts = []
    if own := ast.get_docstring(owner):
        parts.append(own)
    for node in owner.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (doc := ast.get_docstring(node)):
            parts.append(f"{name}.{node.name}\n{doc}")
    return "\n\n".join(parts)
