"""Readers that count what they cannot read.

Bad input never crashes a run and never loses the rest of a file: a corrupt JSONL line, invalid UTF-8, a record
without text, an empty or giant document, or an unreadable file becomes a *rejected* record (with its reason,
source file and line) written by ``rejected_writer``, and is counted in the reader's stats as ``rejected`` and
``rejected_<reason>``. Lines are read with a size bound, so one giant line never sits in memory whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from string import Template

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.disk_base import DiskWriter

SNIPPET_CHARS = 200  # how much of a rejected record is kept, to show what it looked like
READ_CHUNK = 1 << 20


class UnreadableOwnOutput(RuntimeError):
    """A record a stage wrote itself does not read back where the reader's document indices must stay aligned."""


class RejectingReader(BaseDiskReader):
    """Base for readers that reject bad records with a reason instead of skipping them silently.

    ``rank_file``: a datatrove writer's file name template (``${rank}.jsonl.gz``); rank r then reads only the file
    rank r of the writing stage wrote, or nothing where it wrote none, instead of every world_size-th file of the
    folder (which shifts when a rank wrote nothing), so that a document's index is the one it had at that rank.
    Its records are read back as they were written, without the empty and size checks (its stage held each one
    already, and input read by a reader without those checks may have passed them); one that still cannot be read
    is an error, since skipping it would shift the indices of the rest."""

    def __init__(self, data_folder: str, rejected_writer: DiskWriter | None = None, max_doc_chars: int = 1_000_000,
                 glob_pattern: str | None = None, text_key: str = "text", id_key: str = "id",
                 rank_file: str | None = None):
        super().__init__(data_folder, glob_pattern=glob_pattern, text_key=text_key, id_key=id_key)
        self.rejected_writer = rejected_writer
        self.max_doc_chars = max_doc_chars
        self.rank_file = None if rank_file is None else Template(rank_file)
        self._rejected: DiskWriter | None = None
        self._rank = 0

    def reject(self, reason: str, source: str, where: int | str, snippet: bytes | str) -> None:
        if self.rank_file is not None:
            raise UnreadableOwnOutput(f"{source} {where}: {reason}: a document its own stage wrote does not read "
                                      "back, and the documents after it would take the wrong index")
        self.stat_update("rejected", f"rejected_{reason}")
        if self._rejected is not None:
            if isinstance(snippet, bytes):
                snippet = snippet[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
            record = Document(text=snippet[:SNIPPET_CHARS], id=f"{source}#{where}",
                              metadata={"reason": reason, "file": source, "where": where})
            self._rejected.write(record, self._rank)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._rank = rank
        if not self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern):
            self.stat_update("input_files", value=0)  # an empty input folder: nothing to read, not an error
            return
        with self.rejected_writer if self.rejected_writer else contextlib.nullcontext() as writer:
            self._rejected = writer
            if self.rank_file is None:
                yield from super().run(data, rank, world_size)
            else:
                name = self.rank_file.substitute(rank=str(rank).zfill(5))  # as datatrove's writers name it
                for document in self.read_files_shard([name] if self.data_folder.isfile(name) else []):
                    self.update_doc_stats(document)
                    yield document
            self._rejected = None

    def read_file(self, filepath: str) -> DocumentsPipeline:
        try:
            yield from self.read_records(filepath)
        except UnreadableOwnOutput:
            raise
        except Exception as error:  # noqa: BLE001 - any unreadable file is counted, and the run goes on
            self.reject("unreadable_file", filepath, "file", f"{type(error).__name__}: {error}")

    def read_records(self, filepath: str) -> DocumentsPipeline:
        raise NotImplementedError

    def checked_document(self, record: dict, filepath: str, where: int | str) -> Document | None:
        """The record as a Document, or None after rejecting it (missing/empty/non-string/giant text)."""
        text = record.get(self.text_key)
        if text is None:
            self.reject("missing_text", filepath, where, orjson.dumps(record)[:SNIPPET_CHARS])
        elif not isinstance(text, str):
            self.reject("text_not_a_string", filepath, where, repr(text))
        elif self.rank_file is None and not text.strip():
            self.reject("empty_text", filepath, where, "")
        elif self.rank_file is None and len(text) > self.max_doc_chars:
            self.reject("giant_document", filepath, where, text)
        else:
            try:
                return self.get_document_from_dict(record, filepath, where)
            except Exception as error:  # noqa: BLE001 - e.g. a malformed "media" field: this record only
                self.reject("bad_record", filepath, where, f"{type(error).__name__}: {error}")
        return None


class RecordingJsonlReader(RejectingReader):
    """JSONL (plain, .gz, .zst) reader; one bad line costs one rejected record, never the rest of the file."""

    name = "🐿 Jsonl (counted rejections)"

    def read_records(self, filepath: str) -> DocumentsPipeline:
        # 4 bytes per character is the UTF-8 worst case: a longer line is giant whatever it holds
        max_line_bytes = self.max_doc_chars * 4 + 4096
        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            lines = f if self.rank_file is not None else _bounded_lines(f, max_line_bytes)
            for line_number, line in enumerate(lines, start=1):
                if line is None:
                    self.reject("giant_document", filepath, line_number, b"")
                    continue
                if not line.strip():
                    continue
                with self.track_time():
                    try:
                        record = orjson.loads(line)  # validates UTF-8 too
                    except orjson.JSONDecodeError as error:
                        reason = "invalid_utf8" if "utf-8" in str(error).lower() else "corrupt_json"
                        self.reject(reason, filepath, line_number, line)
                        continue
                    if not isinstance(record, dict):
                        self.reject("not_an_object", filepath, line_number, line)
                        continue
                    document = self.checked_document(record, filepath, line_number)
                if document is not None:
                    yield document


class HtmlFolderReader(RejectingReader):
    """Each ``.html``/``.htm`` file of a folder is one document (raw HTML; an extraction step follows)."""

    name = "🌐 HTML files"

    def read_records(self, filepath: str) -> DocumentsPipeline:
        with self.data_folder.open(filepath, "rb") as f:
            raw = f.read(self.max_doc_chars * 4 + 1)
        if len(raw) > self.max_doc_chars * 4:
            self.reject("giant_document", filepath, "file", b"")
            return
        text = raw.decode("utf-8", errors="replace")  # legacy pages are often latin-1; the extractor copes
        if "\ufffd" in text:
            self.stat_update("utf8_replaced")
        document = self.checked_document({self.text_key: text, self.id_key: filepath}, filepath, "file")
        if document is not None:
            yield document


def _bounded_lines(f, max_bytes: int) -> Iterator[bytes | None]:  # noqa: ANN001 - any binary file object
    """Lines of a binary file; a line longer than ``max_bytes`` is skipped in chunks and yielded as None."""
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = f.readline(READ_CHUNK)
        yield None
