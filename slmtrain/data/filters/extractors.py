"""HTML -> text extraction steps (Trafilatura, resiliparse) that never turn a broken extractor into silent drops.

Each page is extracted in a sandbox worker process (a hung or crashing page cannot take the task down), as in
datatrove's extractors, but with the three failure kinds kept apart:

- the library cannot work (it does not import, the probe page does not extract): the worker cannot start, and the
  step raises ``ExtractorUnavailable`` (one line) instead of removing every page (the pipeline's pre-flight
  check, ``checks.check_step``, meets this before any stage starts);
- the worker dies while on a page (killed, out of memory, a crash in the parser): it is restarted and the page is
  tried once more, so an outside kill costs nothing; a page that kills the worker twice is removed as
  ``worker_died``. A worker that cannot be restarted stops the run;
- a page runs past ``timeout`` seconds (set far above normal page times, so that machine load changes nothing):
  removed as ``timeout``, and the worker replaced.

Every removed page carries its reason (``not_html``, ``empty_extraction``, ``timeout``, ``worker_died``,
``import_error``, ``extraction_error``), counted as ``dropped_<reason>``. Reasons other than the step's own criterion
(``FAILURE_REASONS``) are guarded: once ``GUARD_MIN_PAGES`` pages are seen, a task whose failures pass
``failure_limit`` raises ``MassRemoval`` at once (the pipeline checks the whole run's share at the end), unless
``failure_limit`` is None.
"""

from __future__ import annotations

import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.logging import logger

from slmtrain.config import UserError

DEFAULT_TIMEOUT = 30.0  # seconds per page: normal pages take milliseconds to a few hundred ms, even on a busy host
WORKER_START_TIMEOUT = 120.0  # importing the library and extracting the probe page, on a loaded machine
FAILURE_REASONS = ("timeout", "worker_died", "import_error", "extraction_error")
GUARD_MIN_PAGES = 50  # the failure share is judged mid-task only after this many pages
LOOKS_LIKE_HTML = re.compile(r"<\s*[a-zA-Z!/]")
PROBE_PAGE = (
    "<html><head><title>Probe page</title></head><body><article><h1>Reading a configuration file</h1>"
    "<p>The program reads its settings from a plain text file when it starts. Each line holds one setting, "
    "written as a name, an equals sign and a value. Lines that begin with a hash sign are comments and are "
    "ignored, so that you can explain why a value was chosen.</p>"
    "<p>When a setting appears twice, the last value wins. If the file cannot be read, the program stops and "
    "prints the name of the file together with the reason, instead of starting with default values that "
    "nobody asked for.</p></article></body></html>"
)


class ExtractorUnavailable(UserError):
    """The extraction library cannot work here (import error, crash or hang on the probe page)."""


class MassRemoval(UserError):
    """A step removed more of its input for failures (not its own criterion) than the run allows."""


class SandboxWorker:
    """One child process extracting pages sent over a pipe; started with the probe page as warm-up."""

    def __init__(self, extract: Callable[[str], str | None], label: str):
        self.extract, self.label = extract, label
        self.process: multiprocessing.Process | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        self.stop()
        self.conn, child_conn = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_serve, args=(child_conn, self.extract), daemon=True)
        self.process.start()
        child_conn.close()  # the child holds the other end: its death reads as EOF here
        if not self.conn.poll(WORKER_START_TIMEOUT):
            self.stop()
            raise ExtractorUnavailable(f"{self.label}: the extraction worker was not ready after "
                                       f"{WORKER_START_TIMEOUT:.0f} s (it hangs on the probe page)")
        try:
            kind, value = self.conn.recv()
        except EOFError:
            kind, value = "died", f"exit code {self.process.exitcode}"
        if kind != "ready":
            self.stop()
            raise ExtractorUnavailable(f"{self.label}: the extraction worker cannot start ({value})")

    def run(self, html: str, timeout: float) -> tuple[str, str | None]:
        """(kind, value): ('ok', text), ('import_error' | 'extraction_error', message), ('timeout' | 'died', None)."""
        try:
            self.conn.send(html)
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.stop()
            return "died", None
        alive = self.process.is_alive()
        self.stop()
        return ("timeout" if alive else "died"), None

    def stop(self) -> None:
        if self.process is not None:
            self.conn.close()
            self.process.kill()
            self.process.join()
            self.process, self.conn = None, None


def _serve(conn: Connection, extract: Callable[[str], str | None]) -> None:
    """The worker's loop: warm up on the probe page, then extract each page received; errors are sent back."""
    try:
        if not (extract(PROBE_PAGE) or "").strip():
            conn.send(("empty", "the probe page extracted to nothing"))
            return
    except BaseException as error:  # noqa: BLE001 - whatever stops the library is the reason reported
        conn.send(("error", f"{type(error).__name__}: {error}".splitlines()[0]))
        return
    conn.send(("ready", None))
    while True:
        try:
            html = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", extract(html)))
        except Exception as error:  # noqa: BLE001 - one page's failure, counted by its kind
            kind = "import_error" if isinstance(error, ImportError) else "extraction_error"
            conn.send((kind, f"{type(error).__name__}: {error}"))


class SandboxedExtractor(BaseFilter):
    """Base of the extraction steps: ``extract(html)`` runs in a sandbox worker; failures removed by reason."""

    type = "🛢 - EXTRAC"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, failure_limit: float | None = 0.2,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.failure_limit = failure_limit
        self._worker: SandboxWorker | None = None
        self._seen: Counter[str] = Counter()

    def extract(self, html: str) -> str | None:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._worker, self._seen = SandboxWorker(self.extract, self.name), Counter()
        self._worker.start()
        try:
            yield from super().run(data, rank, world_size)
        finally:
            self._worker.stop()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self._extract_into(doc)
        self._seen[reason or "kept"] += 1
        self._guard()
        return reason is None or (False, reason)

    def _extract_into(self, doc: Document) -> str | None:
        """Replace the document's HTML by its text; return the removal reason, or None when it is kept."""
        if not LOOKS_LIKE_HTML.search(doc.text[:65_536]):
            return "not_html"
        for attempt in range(2):  # a worker killed from outside: the page is tried again in a fresh one
            kind, value = self._worker.run(doc.text, self.timeout)
            if kind in ("timeout", "died"):
                what = f"ran past {self.timeout} s" if kind == "timeout" else "killed the worker"
                logger.warning(f"{self.name}: page {doc.id} {what}; restarting the worker")
                self.stat_update("worker_restarts")
                self._worker.start()  # raises ExtractorUnavailable when it cannot be restarted
            if kind != "died":
                break
        if kind == "ok":
            if not (value or "").strip():
                return "empty_extraction"
            doc.text = value
            return None
        if kind in ("import_error", "extraction_error"):
            logger.warning(f"{self.name}: page {doc.id}: {value}")
        return "worker_died" if kind == "died" else kind

    def _guard(self) -> None:
        seen = sum(self._seen.values())
        if self.failure_limit is not None and seen >= GUARD_MIN_PAGES:
            raise_on_mass_removal(self.name, seen, self._seen, self.failure_limit)


def raise_on_mass_removal(step: str, seen: int, removed_by_reason: Mapping[str, int], limit: float) -> None:
    """Raise MassRemoval when more than ``limit`` of ``seen`` documents were removed for FAILURE_REASONS."""
    failures = {reason: removed_by_reason[reason] for reason in FAILURE_REASONS if removed_by_reason.get(reason)}
    share = sum(failures.values()) / max(seen, 1)
    if share > limit:
        counts = ", ".join(f"{reason} {count}" for reason, count in failures.items())
        raise MassRemoval(f"{step}: {share:.0%} of {seen} documents failed ({counts}), more than the {limit:.0%} "
                          "allowed (max_failure_share); see removed/ and curate.log, or set allow_mass_removal=true")


class TrafilaturaExtractor(SandboxedExtractor):
    """Trafilatura (FineWeb's extractor), through datatrove's ``Trafilatura.extract`` with its options."""

    name = "⛏ Trafilatura (sandboxed)"
    _requires_dependencies = ["trafilatura"]

    def __init__(self, favour_precision: bool = True, deduplicate: bool = True, timeout: float = DEFAULT_TIMEOUT,
                 failure_limit: float | None = 0.2, exclusion_writer: DiskWriter | None = None):
        from datatrove.pipeline.extractors import Trafilatura

        super().__init__(timeout, failure_limit, exclusion_writer)
        self.library = Trafilatura(favour_precision=favour_precision, deduplicate=deduplicate)

    def extract(self, html: str) -> str | None:
        return self.library.extract(html)


class ResiliparseExtractor(SandboxedExtractor):
    """resiliparse's main-content plain-text extraction (DCLM's extractor, several times faster than Trafilatura).

    ``max_link_density``: lists, tables and ``<nav>`` blocks whose text is at least this share of link text (tables
    of contents, navigation bars, "see also" lists) are left out, as Trafilatura leaves them out; resiliparse's own
    main-content rules keep them. On 2,000 Debian documentation pages this raised the share of the documents
    Trafilatura's text passes the FineWeb filters with that resiliparse's text passes too from 80% to 91% (the
    tables of contents failed Gopher's alphabetic-words rule, repeated navigation FineWeb's duplicate-lines rule),
    at about 2 ms a page instead of 1 (Trafilatura: about 50). None: resiliparse alone."""

    name = "⛏ Resiliparse (sandboxed)"
    _requires_dependencies = ["resiliparse"]

    def __init__(self, main_content: bool = True, preserve_formatting: bool = True, list_bullets: bool = False,
                 alt_texts: bool = False, links: bool = False, form_fields: bool = False, noscript: bool = False,
                 comments: bool = False, max_link_density: float | None = 0.8, timeout: float = DEFAULT_TIMEOUT,
                 failure_limit: float | None = 0.2, exclusion_writer: DiskWriter | None = None):
        if max_link_density is not None and not 0 < max_link_density <= 1:
            raise UserError(f"max_link_density: a share of a block's text in (0, 1], or null; got {max_link_density}")
        super().__init__(timeout, failure_limit, exclusion_writer)
        self.max_link_density = max_link_density
        self.options = {"main_content": main_content, "preserve_formatting": preserve_formatting,
                        "list_bullets": list_bullets, "alt_texts": alt_texts, "links": links,
                        "form_fields": form_fields, "noscript": noscript, "comments": comments}

    def extract(self, html: str) -> str | None:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        if self.max_link_density is None:
            return extract_plain_text(html, **self.options)
        tree = HTMLTree.parse(html)
        mark_link_lists(tree, self.max_link_density)
        return extract_plain_text(tree, skip_elements=[f"[{LINK_LIST_MARK}]"], **self.options)


LINK_LIST_TAGS = frozenset({"ul", "ol", "dl", "table", "nav"})
LINK_LIST_MARK = "data-slmtrain-link-list"


def mark_link_lists(tree, max_link_density: float) -> None:  # noqa: ANN001 - a resiliparse HTMLTree
    """Mark (with an attribute: the tree's structure stays as parsed) every list, table and nav block whose
    non-space text is at least ``max_link_density`` link text.

    Only the outermost blocks that hold a link are walked, each once, depth first, adding every text node's length
    to the blocks around it: resiliparse's node collections take time quadratic in their length to iterate, which
    made a per-block count of anchors cost 0.5 s on a nested table of contents."""
    if tree.body is None:
        return
    outer = None
    for block in tree.body.query_selector_all(", ".join(sorted(LINK_LIST_TAGS))):  # document order: outer first
        if outer is not None and outer.contains(block):
            continue
        outer = block
        if block.query_selector("a") is not None:
            _mark_within(block, max_link_density)


def _mark_within(root, max_link_density: float) -> None:  # noqa: ANN001 - a resiliparse DOMNode
    from resiliparse.parse.html import NodeType

    # one frame per open element: [node, inside a link, non-space characters, of them link text, next child]
    frames = [[root, False, 0, 0, root.first_child]]
    while frames:
        frame = frames[-1]
        node, in_link, chars, linked, child = frame
        if child is None:  # every child counted: judge the element, then count it in its parent
            frames.pop()
            if node.tag in LINK_LIST_TAGS and chars and linked / chars >= max_link_density:
                node.setattr(LINK_LIST_MARK, "")
            if frames:
                frames[-1][2] += chars
                frames[-1][3] += linked
            continue
        frame[4] = child.next
        if child.type == NodeType.TEXT:
            length = _non_space_length(child.text)
            frame[2] += length
            frame[3] += length if in_link else 0
        elif child.type == NodeType.ELEMENT:
            frames.append([child, in_link or child.tag == "a", 0, 0, child.first_child])


def _non_space_length(text: str) -> int:
    return len(text) - sum(text.count(c) for c in " \n\t\r")
