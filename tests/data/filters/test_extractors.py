"""Extraction steps: every failure kind is told apart, counted and recorded; a broken library stops the run."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from pydoc_data.topics import topics

from tests.output import diagnostics
from tests.paths import REPO_ROOT
from slmtrain.config import UserError
from slmtrain.data.debian_docs import fetch_debian_pages
from slmtrain.data.filters.extractors import (GUARD_MIN_PAGES, LINK_LIST_MARK, MassRemoval, ResiliparseExtractor,
                                              TrafilaturaExtractor, mark_link_lists)
from slmtrain.data.curate import run_pipeline

PROSE = sorted((text for text in topics.values() if len(text) > 3_000), key=len)
EXTRACTORS = [TrafilaturaExtractor, ResiliparseExtractor]


def page(text: str) -> str:
    body = "".join(f"<p>{paragraph}</p>" for paragraph in text.split("\n\n"))
    return f"<html><head><title>t</title></head><body><nav>Home | Up</nav><article>{body}</article></body></html>"


def read_gz(folder: Path) -> list[dict]:
    return [orjson.loads(line) for p in sorted(folder.rglob("*.jsonl.gz")) for line in gzip.open(p).read().splitlines()]


def counts(step) -> dict[str, int]:  # noqa: ANN001 - any datatrove step
    return {key: value.total for key, value in step.stats.stats.items()}


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_pages_are_extracted_and_each_removal_has_its_reason(extractor: type, tmp_path: Path) -> None:
    docs = [Document(text=page(PROSE[i]), id=f"page{i}") for i in range(3)]
    docs += [Document(text="<html><body><script>var x = 1;</script></body></html>", id="script_only"),
             Document(text="plain text, no markup at all", id="plain")]
    step = extractor(exclusion_writer=JsonlWriter(str(tmp_path / "removed")))
    kept = list(step.run(iter(docs)))
    assert [doc.id for doc in kept] == ["page0", "page1", "page2"]
    assert all("<p>" not in doc.text and PROSE[i].split()[0] in doc.text for i, doc in enumerate(kept))
    removed = {r["id"]: r["metadata"]["filter_reason"] for r in read_gz(tmp_path / "removed")}
    assert removed == {"script_only": "empty_extraction", "plain": "not_html"}
    assert counts(step)["dropped_empty_extraction"] == 1 and counts(step)["dropped_not_html"] == 1


def test_resiliparse_leaves_out_link_lists_and_keeps_lists_of_prose() -> None:
    from resiliparse.parse.html import HTMLTree

    contents = "".join(f'<li><a href="s{i}.html">{i}.{i}. Section {i}</a></li>' for i in range(1, 9))
    prose = ("<li>This item explains the option in words, and <a href='x.html'>one link</a> points to more.</li>"
             "<li>A second item says more about it.</li>")
    footer = "<table><tr><td><a href='p.html'>Prev</a></td><td><a href='n.html'>Next</a></td></tr></table>"
    paragraph = " ".join(PROSE[0].split()[:80])
    html = (f"<html><body><ul id='toc'>{contents}</ul><article><p>{paragraph}</p>"
            f"<ul id='prose'>{prose}</ul></article>{footer}</body></html>")
    tree = HTMLTree.parse(html)
    mark_link_lists(tree, 0.8)
    marked = {block.tag + block.getattr("id", "") for block in tree.body.query_selector_all(f"[{LINK_LIST_MARK}]")}
    assert marked == {"ultoc", "table"}  # the prose list, 11% link text, stays
    text = ResiliparseExtractor().extract(html)
    assert "Section 3" not in text and "Prev" not in text and paragraph in text
    unfiltered = ResiliparseExtractor(max_link_density=None).extract(html)
    assert "Prev" in unfiltered and paragraph in unfiltered  # resiliparse alone keeps the navigation table


@pytest.mark.parametrize("share", [0, 1.5])
def test_a_link_density_outside_0_1_is_a_config_error(share: float) -> None:
    with pytest.raises(UserError, match="max_link_density"):
        ResiliparseExtractor(max_link_density=share)


def test_a_page_past_the_time_limit_is_counted_as_timeout() -> None:
    slow = page("\n\n".join(f"Paragraph {i} of a very long page, with some words to weigh." for i in range(40_000)))
    docs = [Document(text=page(PROSE[0]), id="before"), Document(text=slow, id="slow"),
            Document(text=page(PROSE[1]), id="after")]
    step = TrafilaturaExtractor(timeout=0.5, failure_limit=None)
    started = time.perf_counter()
    kept = [doc.id for doc in step.run(iter(docs))]
    assert kept == ["before", "after"]  # the worker was replaced and went on
    assert counts(step)["dropped_timeout"] == 1 and counts(step)["worker_restarts"] == 1
    assert time.perf_counter() - started < 60


def kill_the_worker_after(docs: list[Document], n: int) -> Iterator[Document]:
    """Feed ``docs``; after the n-th, SIGKILL the sandbox worker (this process's only child) and wait for its death."""
    for i, doc in enumerate(docs):
        if i == n:
            (worker,) = multiprocessing.active_children()
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
        yield doc


def test_a_killed_worker_is_restarted_and_the_remaining_documents_are_extracted() -> None:
    docs = [Document(text=page(PROSE[i]), id=str(i)) for i in range(6)]
    step = ResiliparseExtractor()
    kept = [doc.id for doc in step.run(kill_the_worker_after(docs, 2))]
    assert kept == [str(i) for i in range(6)]
    assert counts(step)["worker_restarts"] == 1 and "dropped" not in counts(step)


class CrashesOnMarkedPages(ResiliparseExtractor):
    """Kills its own worker process on pages holding CRASH, like a segfault in the parser would."""

    def extract(self, html: str) -> str | None:
        if "CRASH" in html:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().extract(html)


class FailsOnMarkedPages(ResiliparseExtractor):
    def extract(self, html: str) -> str | None:
        if "FAIL" in html:
            raise ValueError("parser gave up")
        return super().extract(html)


def test_a_page_that_kills_the_worker_each_time_is_removed_as_worker_died(tmp_path: Path) -> None:
    docs = [Document(text=page(PROSE[0]), id="a"), Document(text=page("CRASH " + PROSE[1]), id="crash"),
            Document(text=page(PROSE[2]), id="b")]
    step = CrashesOnMarkedPages(failure_limit=None, exclusion_writer=JsonlWriter(str(tmp_path / "removed")))
    assert [doc.id for doc in step.run(iter(docs))] == ["a", "b"]
    assert [r["metadata"]["filter_reason"] for r in read_gz(tmp_path / "removed")] == ["worker_died"]
    assert counts(step)["worker_restarts"] == 2  # tried twice, then the next page in a fresh worker


def test_failures_past_the_limit_stop_the_task_unless_allowed() -> None:
    def docs() -> Iterator[Document]:  # every other page fails
        for i in range(GUARD_MIN_PAGES + 10):
            yield Document(text=page(("FAIL " if i % 2 else "") + PROSE[i % 5]), id=str(i))

    with pytest.raises(MassRemoval, match=r"50% of 50 documents failed \(extraction_error 25\).*allow_mass_removal"):
        list(FailsOnMarkedPages(failure_limit=0.2).run(docs()))
    allowed = FailsOnMarkedPages(failure_limit=None)
    assert len(list(allowed.run(docs()))) == (GUARD_MIN_PAGES + 10) // 2
    assert counts(allowed)["dropped_extraction_error"] == (GUARD_MIN_PAGES + 10) // 2


EXTRACT_ONLY = """
description: extraction only
max_doc_chars: 2000000
steps:
  trafilatura: {timeout: 0.5}
"""


def test_pipeline_ends_non_zero_on_mass_timeouts_unless_allowed(tmp_path: Path) -> None:
    pages = tmp_path / "html"
    pages.mkdir()
    for i in range(3):
        (pages / f"page{i}.html").write_text(page(PROSE[i]))
    (pages / "slow.html").write_text(page("\n\n".join(f"Paragraph {i} with words." for i in range(40_000))))
    declaration = tmp_path / "extract.yaml"
    declaration.write_text(EXTRACT_ONLY)
    with pytest.raises(MassRemoval, match=r"steps.trafilatura: 25% of 4 documents failed \(timeout 1\)"):
        run_pipeline(str(declaration), pages, tmp_path / "out", workers=1)
    stats = run_pipeline(str(declaration), pages, tmp_path / "allowed", {"allow_mass_removal": True}, workers=1)
    assert stats.step("trafilatura").removed_by_reason == {"timeout": 1} and stats.totals.kept == 3


def test_an_unimportable_extractor_library_fails_fast_with_one_line(tmp_path: Path) -> None:
    """Issue 17's case: lxml_html_clean missing makes `import trafilatura` fail inside the sandbox."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['lxml_html_clean'] = None\n")
    pages = tmp_path / "html"
    pages.mkdir()
    (pages / "a.html").write_text(page(PROSE[0]))
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{REPO_ROOT}"}
    result = subprocess.run([sys.executable, "launch/curate.py", "filter=fineweb", f"input={pages}",
                             f"output={tmp_path / 'out'}", "workers=1"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert diagnostics(result.stderr).strip().count("\n") == 0, diagnostics(result.stderr)
    assert "steps.trafilatura" in diagnostics(result.stderr) and "lxml_html_clean" in diagnostics(result.stderr)
    assert not (tmp_path / "out" / "logs").exists()  # refused before any stage ran


def test_real_debian_pages_share_extracted(tmp_path: Path) -> None:
    pages = fetch_debian_pages(tmp_path, n_pages=12, packages=["sqlite3-doc"])
    docs = [path.read_text(errors="replace") for path in sorted(pages.iterdir())]
    assert len(docs) == 12
    for extractor in EXTRACTORS:
        step = extractor()
        kept = list(step.run(Document(text=html, id=str(i)) for i, html in enumerate(docs)))
        share = len(kept) / len(docs)
        reasons = {k: v for k, v in counts(step).items() if k.startswith("dropped_")}
        print(f"{extractor.__name__}: {share:.0%} of {len(docs)} real sqlite3-doc pages extracted {reasons}")
        assert share >= 0.75 and not reasons.keys() - {"dropped_empty_extraction"}
