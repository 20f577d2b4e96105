"""The documents a run reads: ``input=`` (a file, a folder or ``hf://DATASET``, else the embedded demo corpus for
pipelines that say so), its format (sniffed from the file names unless declared) and the datatrove reader for it."""

from __future__ import annotations

import os
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader, WarcReader
from datatrove.pipeline.writers import JsonlWriter

from slmtrain.config import UserError
from slmtrain.data.curate.config import PipelineConfig
from slmtrain.data.filters.inputs import HtmlFolderReader, RecordingJsonlReader

# what datatrove's readers take, by input format (zstd, WARC and HTML too: unlike slmtrain.data.shards.read_texts)
DATATROVE_SUFFIXES = {"jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz"), "parquet": (".parquet",),
                      "warc": (".warc", ".warc.gz"), "html": (".html", ".htm")}
INPUT_GLOBS = {"jsonl": "**/*.json*", "parquet": "**/*.parquet", "warc": "**/*.warc*", "html": "**/*.htm*"}


def resolve_input(config: PipelineConfig, input: str | Path | None, output: Path) -> str:
    """The source to read as a string: an absolute path or ``hf://DATASET``; without ``input``, the demo corpus
    written once under ``output/source`` (pipelines declaring ``default_input: demo`` only)."""
    if input is not None and str(input).startswith("hf://"):
        _check_hub_reachable(str(input))
    if input is not None:
        if not str(input).startswith("hf://") and not Path(input).exists():
            raise UserError(f"input not found: {input}")
        if Path(input).is_dir() and not any(p.is_file() for p in Path(input).rglob("*")):
            raise UserError(f"input folder {input} is empty")
        return str(input) if str(input).startswith("hf://") else str(Path(input).resolve())
    if config.default_input != "demo":
        raise UserError("input= is required for this pipeline (only pipelines with default_input: demo build one)")
    from slmtrain.data.demo import write_demo_documents

    source, done = output / "source", output / "source" / ".complete"
    if not done.is_file():
        write_demo_documents(source)
        done.touch()
    return str(source)


def _check_hub_reachable(source: str) -> None:
    """hf:// input streams from the Hub: fail in one line, before any stage starts, when it cannot be reached
    (with HF_HUB_OFFLINE=1 the local datasets cache is used instead and nothing is checked)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return
    from huggingface_hub import HfApi

    name = source.removeprefix("hf://")
    try:
        HfApi().dataset_info(name, timeout=15)
    except Exception as error:  # noqa: BLE001 - no network, unknown dataset, no access: all one message
        raise UserError(f"cannot read {source} from the Hugging Face Hub ({type(error).__name__}); without network, "
                        "download it elsewhere and pass a local path, or set HF_HUB_OFFLINE=1 to use the local cache") from None


def detect_format(config: PipelineConfig, source: str) -> str:
    """The declared ``input_format``, or the one format the source's file names have (one folder, one format)."""
    if config.input_format != "auto":
        return config.input_format
    if source.startswith("hf://"):
        return "hf"
    path = Path(source)
    names = [path.name] if path.is_file() else [p.name for p in path.rglob("*") if p.is_file()]
    found = [fmt for fmt, suffixes in DATATROVE_SUFFIXES.items() if any(n.endswith(suffixes) for n in names)]
    if len(found) > 1:
        raise UserError(f"{source} mixes input formats ({', '.join(found)}): give one folder per format, "
                        "or set input_format=")
    if not found:
        raise UserError(f"{source}: no input files of a known format "
                        f"({', '.join(s for suffixes in DATATROVE_SUFFIXES.values() for s in suffixes)})")
    return found[0]


def build_reader(config: PipelineConfig, input_format: str, source: str, output: Path) -> tuple[PipelineStep, int]:
    """The reader for the input and the number of input files (which bounds useful parallelism). JSONL and HTML
    readers write unreadable records to ``output/rejected`` with their reason."""
    if input_format == "hf":
        from datatrove.pipeline.readers import HuggingFaceDatasetReader

        dataset = source.removeprefix("hf://")
        return HuggingFaceDatasetReader(dataset, {"split": config.hf_split}, streaming=True,
                                        text_key=config.text_key), 1
    path = Path(source)
    folder, pattern = (str(path.parent), path.name) if path.is_file() else (source, INPUT_GLOBS[input_format])
    n_files = 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.name.endswith(DATATROVE_SUFFIXES[input_format]))
    if input_format == "parquet":
        return ParquetReader(folder, glob_pattern=pattern, text_key=config.text_key), n_files
    if input_format == "warc":
        return WarcReader(folder, glob_pattern=pattern), n_files
    reader_type = HtmlFolderReader if input_format == "html" else RecordingJsonlReader
    rejected = JsonlWriter(str(output / "rejected"))
    return reader_type(folder, rejected, config.max_doc_chars, glob_pattern=pattern, text_key=config.text_key), n_files
