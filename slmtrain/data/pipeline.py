"""Curation pipelines: ``data_filters/NAME.yaml`` -> datatrove stages -> kept/removed/rejected + a per-step table.

A declaration lists ``steps`` as an ordered mapping ``name: {type: TYPE, param: value, ...}`` (``type`` defaults
to the name; ``enabled: false`` drops a step). Parameters are those of the step's class, checked by name, so a
typo is an error naming the valid keys. ``minhash`` splits the pipeline into stages (datatrove's MinHash: the
documents kept so far go to ``work/`` and are signed as they are written, then bucketed, clustered and filtered).

Output layout (the tokenizer and the trainer rely on it)::

    OUTPUT/kept/*.jsonl.gz              kept documents (text, id, metadata)
    OUTPUT/removed/<step>/*.jsonl.gz    every removed document, with metadata.filter_reason
    OUTPUT/rejected/*.jsonl.gz          unreadable input (corrupt line, bad UTF-8, giant, ...) with its reason
    OUTPUT/stats.json, stats.png        per-step in / kept / removed (by reason) / seconds, and the totals
    OUTPUT/curate.log                   datatrove's task logging and warnings (the terminal shows progress only)
    OUTPUT/logs/<stage>/                datatrove logs and completion markers (a re-run skips finished tasks)

Every step is checked before any stage runs (its library imports, its model loads, a probe document goes through
it), and removals for failures rather than a step's criterion (extraction timeouts, dead workers, ...) past
``max_failure_share`` of a step's input end the run with an error unless ``allow_mass_removal`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datatrove.executor import LocalPipelineExecutor
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import ParquetReader, WarcReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.stats import PipelineStats

from slmtrain.config import DECLARATIONS_DIR, ConfigError, UserError, build, load_declaration, merge
from datatrove.utils.logging import logger, setup_default_logger
from datatrove.utils.typeshelper import Languages

from slmtrain.data.filters.checks import check_step
from slmtrain.data.filters.embedding_quality import EmbeddingQualityFilter
from slmtrain.data.filters.extractors import ResiliparseExtractor, TrafilaturaExtractor, raise_on_mass_removal
from slmtrain.data.filters.fasttext_quality import FastTextQualityFilter, train_fasttext_classifier
from slmtrain.data.filters.inputs import HtmlFolderReader, RecordingJsonlReader
from slmtrain.data.filters.offline import OfflineLanguageFilter, OfflineURLFilter
from slmtrain.data.filters.perplexity import PerplexityFilter
from slmtrain.data.filters.tokenization import shared_tokenizer

FILTERS_DIR = DECLARATIONS_DIR / "data_filters"
EXECUTORS = ("local", "slurm", "ray")

# Extraction steps run only on HTML/WARC input (JSONL/Parquet text is already extracted).
EXTRACTION_STEPS: dict[str, type[PipelineStep]] = {"trafilatura": TrafilaturaExtractor,
                                                   "resiliparse": ResiliparseExtractor}
# Steps that remove documents and take an ``exclusion_writer``.
FILTER_STEPS: dict[str, type[PipelineStep]] = {
    **EXTRACTION_STEPS,
    "url": OfflineURLFilter,
    "language": OfflineLanguageFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
    "fasttext_quality": FastTextQualityFilter,
    "embedding_quality": EmbeddingQualityFilter,
    "perplexity": PerplexityFilter,
}
# datatrove filters that split text with their language's word tokenizer: given slmtrain's faster one (same tokens)
WORD_SPLITTING_STEPS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
# Steps that rewrite text.
TEXT_STEPS: dict[str, type[PipelineStep]] = {"pii": PIIFormatter}
STEP_TYPES = sorted([*FILTER_STEPS, *TEXT_STEPS, "minhash"])

INPUT_SUFFIXES = {"jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz"), "parquet": (".parquet",),
                  "warc": (".warc", ".warc.gz"), "html": (".html", ".htm")}
INPUT_GLOBS = {"jsonl": "**/*.json*", "parquet": "**/*.parquet", "warc": "**/*.warc*", "html": "**/*.htm*"}


@dataclass
class PipelineConfig:
    """A curation pipeline as declared in ``data_filters/NAME.yaml`` (plus command-line overrides)."""

    description: str = ""
    input_format: Literal["auto", "jsonl", "parquet", "warc", "html", "hf"] = "auto"
    default_input: Literal["none", "demo"] = "none"  # 'demo': without input=, build the embedded demo corpus
    text_key: str = "text"
    max_doc_chars: int = 1_000_000  # longer documents are rejected as giant
    tasks_per_worker: int = 4  # input shards per worker (more tasks, better balance, more files)
    hf_split: str = "train"
    max_failure_share: float = 0.2  # a step removing more of its input for failures (timeouts, ...) ends the run
    allow_mass_removal: bool = False  # true: report such removals, never stop the run for them
    steps: dict[str, Any] = field(default_factory=dict)
    # executor=slurm: keyword arguments of datatrove's SlurmPipelineExecutor (partition is required; e.g.
    # cluster.partition=cpu cluster.time=12:00:00 cluster.mem_per_cpu_gb=4); executor=ray: those of ray.init
    # (cluster.address=HOST:PORT joins a running cluster, else one is started: cluster.num_cpus=8 ...) and of
    # datatrove's RayPipelineExecutor (cluster.cpus_per_task=1 cluster.mem_per_cpu_gb=2 ...)
    cluster: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("steps", "a pipeline needs at least one step")
        if self.max_doc_chars < 1:
            raise ConfigError("max_doc_chars", "must be >= 1")
        if not 0 <= self.max_failure_share <= 1:
            raise ConfigError("max_failure_share", f"must be in [0, 1], got {self.max_failure_share}")
        for name, spec in self.steps.items():
            spec = {} if spec is None else spec
            if not isinstance(spec, dict):
                raise ConfigError(f"steps.{name}", f"expected a mapping of parameters, got {spec!r}")
            step_type = spec.get("type", name)
            if step_type not in STEP_TYPES:
                raise ConfigError(f"steps.{name}.type", f"invalid value {step_type!r}; valid choices: "
                                  f"{', '.join(STEP_TYPES)}")
            self.steps[name] = spec


@dataclass
class Stage:
    """One datatrove executor's worth of work, with the labels of the steps that get a row in the table."""

    name: str
    pipeline: list[PipelineStep]
    rows: dict[int, str]  # pipeline index -> step name in the table
    tasks: int
    checks: list[Callable[[], None]] = field(default_factory=list)  # run in the driver before any stage starts
    before: list[Callable[[], None]] = field(default_factory=list)  # run in the driver first (on-the-spot training)


def load_pipeline_config(name_or_path: str, overrides: dict | None = None) -> PipelineConfig:
    mapping = load_declaration("filter", name_or_path, FILTERS_DIR)
    return build(PipelineConfig, merge(mapping, overrides or {}))


@dataclass
class StepStats:
    """One row of the table: a step's documents in, kept and removed (by reason), and its summed task time."""

    step: str
    documents_in: int
    kept: int
    removed: int
    seconds: float
    removed_by_reason: dict[str, int] = field(default_factory=dict)
    rejected: int = 0  # the read row only: unreadable input
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class Totals:
    documents_in: int
    kept: int
    removed: int
    rejected: int

    @property
    def balanced(self) -> bool:
        return self.documents_in == self.kept + self.removed + self.rejected


@dataclass
class CurationStats:
    """The result of a curation run, as written to ``OUTPUT/stats.json``."""

    pipeline: str
    input: str
    output: str
    wall_seconds: float
    steps: list[StepStats]
    totals: Totals
    executor: str = "local"

    def step(self, name: str) -> StepStats:
        return next(row for row in self.steps if row.step == name)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "totals": {**dataclasses.asdict(self.totals),
                                                        "balanced": self.totals.balanced}}


@dataclass
class Submitted:
    """A run handed to Slurm without waiting: the jobs outlive this process."""

    executor: str
    output: str
    jobs: list[str]
    next: str = "re-run the same command with wait=true to wait for the jobs and write the stats"


def auto_workers() -> int:
    """The cores this process may use (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_pipeline(name_or_path: str, input: str | Path | None, output: Path, overrides: dict | None = None,
                 executor: str = "local", workers: int | None = None, wait: bool = False, verbose: bool = False
                 ) -> CurationStats | Submitted:
    """Run a curation pipeline; return its stats (also written to ``output/stats.json`` and ``stats.png``).

    ``workers=None`` uses the machine's cores. datatrove's task logging goes to ``output/curate.log`` unless
    ``verbose``. ``executor=ray`` runs on a Ray cluster (a local one started for the run, or ``cluster.address``);
    ``executor=slurm`` submits job arrays chained by dependencies and returns at once, unless ``wait``.
    Re-running with the same output skips the tasks that already finished.
    """
    if executor not in EXECUTORS:
        raise ConfigError("executor", f"invalid value {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    workers = auto_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError("workers", f"must be >= 1, got {workers}")
    config = load_pipeline_config(name_or_path, overrides)
    output = Path(output).resolve()
    started = time.perf_counter()
    source = _resolve_input(config, input, output)
    stages = build_stages(config, source, output, workers)
    for stage in stages:
        for check in stage.checks:
            check()
    _check_same_run(output, config, source, stages)
    console_log = None if verbose else output / "curate.log"
    with quiet_console(console_log):
        if executor == "local":
            for number, stage in enumerate(stages, start=1):
                progress = f"[{number}/{len(stages)}] {stage.name}"
                print(f"{progress}: {stage.tasks} tasks ...", flush=True)
                stage_started = time.perf_counter()
                for prepare in stage.before:
                    prepare()
                QuietLocalExecutor(stage.pipeline, tasks=stage.tasks, workers=min(workers, stage.tasks),
                                   logging_dir=str(output / "logs" / stage.name),
                                   console_log=str(console_log) if console_log else None).run()
                print(f"{progress}: done in {time.perf_counter() - stage_started:.1f} s", flush=True)
        elif executor == "ray":
            _run_on_ray(stages, output, workers, config.cluster)
        else:
            _run_on_slurm(stages, output, workers, config.cluster, wait)
    if executor == "slurm" and not wait:
        return Submitted(executor, str(output), [slurm_job_name(output, stage.name) for stage in stages])
    stats = collect_stats(stages, output, name_or_path, source, time.perf_counter() - started)
    stats.executor = executor
    (output / "stats.json").write_text(json.dumps(stats.to_json(), indent=2))
    plot_stats(stats, output / "stats.png")
    if stats.totals.documents_in == 0:
        raise UserError(f"no documents in {source}: its files hold no records")
    if not config.allow_mass_removal:
        for row in stats.steps:
            raise_on_mass_removal(f"steps.{row.step}", row.documents_in, row.removed_by_reason,
                                  config.max_failure_share)
    return stats


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor; with ``console_log``, each task's console logging and warnings go to that file
    (datatrove points every task's logger at the task's stderr, in the pool's worker processes too)."""

    def __init__(self, *args: Any, console_log: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.console_log = console_log

    def _launch_run_for_rank(self, *args: Any, **kwargs: Any) -> Any:
        if self.console_log is None:
            return super()._launch_run_for_rank(*args, **kwargs)
        try:
            with open(self.console_log, "a") as log, contextlib.redirect_stderr(log):
                return super()._launch_run_for_rank(*args, **kwargs)
        finally:
            setup_default_logger()  # the task's logger pointed at the log file: not beyond it


@contextlib.contextmanager
def quiet_console(log_path: Path | None) -> Iterator[None]:
    """Send this process's datatrove logging and warnings to ``log_path`` (None: leave them on the terminal)."""
    if log_path is None:
        yield
        return
    log = open(log_path, "a")  # noqa: SIM115 - closed below, after the logger has left it
    try:
        with contextlib.redirect_stderr(log):
            logger.remove()
            logger.add(log)
            yield
    finally:
        setup_default_logger()  # back on the real stderr, outside the redirect
        log.close()


def _check_same_run(output: Path, config: PipelineConfig, source: str, stages: list[Stage]) -> None:
    """Resuming skips tasks by rank: that is only right for the same configuration, input and task split. The first
    run records them in OUTPUT/run_plan.json; a different re-run into the same OUTPUT is refused."""
    files = [] if source.startswith("hf://") else sorted(
        (str(p.relative_to(source)) if Path(source).is_dir() else p.name, p.stat().st_size)
        for p in ([Path(source)] if Path(source).is_file() else Path(source).rglob("*")) if p.is_file())
    listing = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "cluster"}  # where it runs: no matter
    plan = {"config": settings, "input": source, "input_files": f"{len(files)} files, sha256 {listing}",
            "tasks": {stage.name: stage.tasks for stage in stages}}
    plan = json.loads(json.dumps(plan))  # tuples -> lists, as read back
    plan_file = output / "run_plan.json"
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text())
        changed = [key for key in plan if previous.get(key) != plan[key]]
        if changed:
            raise UserError(f"{output} holds a run with a different {', '.join(changed)} (tasks follow workers=); "
                            "re-run with the same settings to resume, or choose a new output=")
        return
    output.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=1))


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


def _resolve_input(config: PipelineConfig, input: str | Path | None, output: Path) -> str:
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


# --------------------------------------------------------------------------------------------------------------
# Building the stages


def build_stages(config: PipelineConfig, source: str, output: Path, workers: int) -> list[Stage]:
    input_format = _input_format(config, source)
    reader, n_files = _reader(config, input_format, source, output)
    tasks = max(1, min(n_files, workers * config.tasks_per_worker))
    stages: list[Stage] = []
    current = Stage("filter_1", [reader], {0: "read"}, tasks)
    for name, spec in config.steps.items():
        params = dict(spec)
        step_type = params.pop("type", name)
        if not params.pop("enabled", True):
            continue
        if step_type in EXTRACTION_STEPS and input_format not in ("html", "warc"):
            continue  # text is already extracted
        if step_type == "minhash":
            k = len(stages) // 3 + 1  # this is the k-th MinHash: it reads what stage k kept
            closed, current = _minhash_stages(current, k, name, params, output, tasks, config.max_doc_chars)
            stages += closed
            continue
        trained_here = step_type == "fasttext_quality" and "train" in params
        if trained_here:
            current.before.append(_fasttext_trainer(name, params.pop("train"), params, output))
        if step_type in WORD_SPLITTING_STEPS:
            params["language"] = shared_tokenizer(params.get("language", Languages.english))
        failure_limit = None if config.allow_mass_removal else config.max_failure_share
        step = _make_step(name, step_type, params, output, failure_limit)
        # a model trained on the spot exists only once its stage is about to run
        (current.before if trained_here else current.checks).append(functools.partial(check_step, name, step))
        current.rows[len(current.pipeline)] = name
        current.pipeline.append(step)
    current.pipeline.append(JsonlWriter(str(output / "kept")))
    return [*stages, current]


def _input_format(config: PipelineConfig, source: str) -> str:
    if config.input_format != "auto":
        return config.input_format
    if source.startswith("hf://"):
        return "hf"
    path = Path(source)
    names = [path.name] if path.is_file() else [p.name for p in path.rglob("*") if p.is_file()]
    found = [fmt for fmt, suffixes in INPUT_SUFFIXES.items() if any(n.endswith(suffixes) for n in names)]
    if len(found) > 1:
        raise UserError(f"{source} mixes input formats ({', '.join(found)}): give one folder per format, "
                        "or set input_format=")
    if not found:
        raise UserError(f"{source}: no input files of a known format "
                        f"({', '.join(s for suffixes in INPUT_SUFFIXES.values() for s in suffixes)})")
    return found[0]


def _reader(config: PipelineConfig, input_format: str, source: str, output: Path) -> tuple[PipelineStep, int]:
    """The reader for the input and the number of input files (which bounds useful parallelism)."""
    if input_format == "hf":
        from datatrove.pipeline.readers import HuggingFaceDatasetReader

        dataset = source.removeprefix("hf://")
        return HuggingFaceDatasetReader(dataset, {"split": config.hf_split}, streaming=True,
                                        text_key=config.text_key), 1
    path = Path(source)
    folder, pattern = (str(path.parent), path.name) if path.is_file() else (source, INPUT_GLOBS[input_format])
    n_files = 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.name.endswith(INPUT_SUFFIXES[input_format]))
    if input_format == "parquet":
        return ParquetReader(folder, glob_pattern=pattern, text_key=config.text_key), n_files
    if input_format == "warc":
        return WarcReader(folder, glob_pattern=pattern), n_files
    reader_type = HtmlFolderReader if input_format == "html" else RecordingJsonlReader
    rejected = JsonlWriter(str(output / "rejected"))
    return reader_type(folder, rejected, config.max_doc_chars, glob_pattern=pattern, text_key=config.text_key), n_files


def _removed_writer(output: Path, name: str) -> JsonlWriter:
    """Writer of a step's removed documents; one removed without a finer reason carries the step's name."""

    def with_reason(writer: JsonlWriter, document: Document) -> dict:
        document.metadata.setdefault("filter_reason", name)
        return writer._default_adapter(document)

    return JsonlWriter(str(output / "removed" / name), adapter=with_reason)


def _make_step(name: str, step_type: str, params: dict, output: Path, failure_limit: float | None) -> PipelineStep:
    if step_type in EXTRACTION_STEPS:
        return _construct(name, EXTRACTION_STEPS[step_type], params, exclusion_writer=_removed_writer(output, name),
                          failure_limit=failure_limit)
    if step_type in FILTER_STEPS:
        return _construct(name, FILTER_STEPS[step_type], params, exclusion_writer=_removed_writer(output, name))
    return _construct(name, TEXT_STEPS[step_type], params)


def _construct(name: str, cls: Callable, params: dict, **injected: Any) -> Any:
    """``cls(**params, **injected)`` with unknown parameters reported by step name, listing the valid ones (the
    pipeline's own arguments, ``injected``, are not the user's to set)."""
    valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "kwargs", *injected)]
    for key in params:
        if key not in valid:
            raise ConfigError(f"steps.{name}.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
    try:
        return cls(**params, **injected)
    except ConfigError as error:
        raise error.under(f"steps.{name}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"steps.{name}", str(error)) from None
    except ImportError as error:  # datatrove's check of the step's declared dependencies
        raise UserError(f"steps.{name}: {str(error).splitlines()[0]}") from None


class FreshJsonlWriter(JsonlWriter):
    """A JsonlWriter whose task first deletes the file an interrupted run of the same task left: datatrove opens it
    only at the first document, so a re-run that kept nothing would leave the old documents there, to be read back
    by the dedup stage without signatures."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        stale = self._get_output_filename(Document(text="", id=""), rank)
        if self.output_folder.exists(stale):
            self.output_folder.rm(stale)
        return super().run(data, rank, world_size)


def _minhash_stages(current: Stage, k: int, name: str, params: dict, output: Path, tasks: int,
                    max_doc_chars: int) -> tuple[list[Stage], Stage]:
    """Close the current stage into ``work/stage_k``, add datatrove's MinHash bucket and cluster stages, and open
    the next stage with the dedup filter over what the current one kept.

    The signatures are computed in the current stage, right after its documents are written, rather than in a stage
    of their own that reads them back: no pool of workers starts only to read, parse and import spaCy again. Rank
    r's document indices are then those of the file rank r wrote, which is what the dedup filter's reader reads at
    rank r (``rank_file``)."""
    kept_so_far, minhash = output / "work" / f"stage_{k}", output / "work" / f"minhash_{k}"
    config = _construct(name, MinhashConfig, params)
    writer = FreshJsonlWriter(str(kept_so_far))
    signature = MinhashDedupSignature(output_folder=str(minhash / "signatures"), config=config,
                                      language=shared_tokenizer(Languages.english))
    current.pipeline += [writer, signature]
    current.checks.append(functools.partial(check_step, name, signature))
    buckets = Stage(f"minhash_{k}_buckets", [MinhashDedupBuckets(
        input_folder=str(minhash / "signatures"), output_folder=str(minhash / "buckets"), config=config)],
        {}, config.num_buckets)
    cluster = Stage(f"minhash_{k}_cluster", [MinhashDedupCluster(
        input_folder=str(minhash / "buckets"), output_folder=str(minhash / "remove"), config=config)], {}, 1)
    reread = RecordingJsonlReader(str(kept_so_far), max_doc_chars=max_doc_chars,
                                  rank_file=writer.output_filename.template)
    dedup = MinhashDedupFilter(input_folder=str(minhash / "remove"), exclusion_writer=_removed_writer(output, name))
    return [current, buckets, cluster], Stage(f"filter_{k + 1}", [reread, dedup], {1: name}, tasks)


def _fasttext_trainer(name: str, train: dict, params: dict, output: Path) -> Callable[[], None]:
    """Train the step's fastText model before its stage runs, unless the model file exists already.

    ``{output}`` in the training paths stands for the output folder (e.g. negatives = the documents removed by
    the heuristic steps of this very run).
    """
    if not isinstance(train, dict) or not {"positives", "negatives"} <= set(train):
        raise ConfigError(f"steps.{name}.train", "expected a mapping with positives: and negatives: paths")
    model = Path(str(params.get("model", "")))
    if not params.get("model"):
        raise ConfigError(f"steps.{name}.model", "a path is required (where the trained model is saved)")
    if not model.is_absolute():
        params["model"] = model = output / model  # a relative model path lives in the run's output
    valid = set(inspect.signature(train_fasttext_classifier).parameters) - {"out"}
    if unknown := set(train) - valid:
        raise ConfigError(f"steps.{name}.train.{sorted(unknown)[0]}", f"unknown key; valid keys: "
                          f"{', '.join(sorted(valid))}")

    def expand(paths: str | list[str]) -> list[str]:
        return [p.replace("{output}", str(output)) for p in ([paths] if isinstance(paths, str) else paths)]

    def prepare() -> None:
        if model.is_file():
            return
        metrics = train_fasttext_classifier(**{**train, "positives": expand(train["positives"]),
                                               "negatives": expand(train["negatives"]), "out": model})
        (output / f"{name}_training.json").write_text(json.dumps(metrics, indent=2))

    return prepare


# --------------------------------------------------------------------------------------------------------------
# Cluster executors


def _run_on_ray(stages: list[Stage], output: Path, workers: int, options: dict[str, Any]) -> None:
    """Run the stages one after the other on a Ray cluster: a local one started here (``ray.init`` options such as
    ``cluster.num_cpus``) and stopped at the end, or the running cluster at ``cluster.address``. The other
    ``cluster.*`` keys go to datatrove's RayPipelineExecutor (``cpus_per_task``, ``mem_per_cpu_gb``, ...). A task
    whose worker dies is resubmitted (up to 3 times); one that still fails stops the run, and the next run resumes
    it. A cluster on this machine (started here, or joined at a loopback address) listens on 127.0.0.1 only."""
    with _ray_on_loopback(_is_loopback(options.get("address"))):
        import ray
        from datatrove.executor import RayPipelineExecutor

        split = _split_options(options, {"ray.init": ray.init, "RayPipelineExecutor": RayPipelineExecutor})
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage reports
        runtime_env = {"worker_process_setup_hook": "slmtrain.data.pipeline.ray_worker_setup",
                       **split["ray.init"].pop("runtime_env", {})}
        address = split["ray.init"].get("address")
        if address not in (None, "auto", "local"):
            _check_cluster_answers(address)
            if _is_loopback(address):
                _ray_token_auth_if_available()
        try:  # "local": a new cluster, even where one was started with `ray start`
            ray.init(**{"address": "local", "runtime_env": runtime_env, **split["ray.init"]})
        except ConnectionError as error:  # nothing there, or a cluster whose token this driver lacks
            reason = str(error.__cause__ or error).strip().splitlines()[0].split(". Last connection error")[0]
            if not address:
                raise UserError(f"cannot start Ray: {reason}") from None
            raise UserError(f"cluster.address={address}: cannot join the Ray cluster: {reason} (a cluster with "
                            "token authentication needs RAY_AUTH_MODE=token and its token)") from None
        try:
            for stage in stages:
                for prepare in stage.before:
                    prepare()
                RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(workers, stage.tasks),
                                    logging_dir=str(output / "logs" / stage.name),
                                    **split["RayPipelineExecutor"]).run()
                _check_stage_complete(stage, output)
        finally:
            ray.shutdown()


# Ray binds its servers to every interface unless the node's address is 127.0.0.1, and on Linux it replaces a given
# 127.0.0.1 by the machine's external address. Its single-machine mode (the default on macOS and Windows) keeps
# 127.0.0.1: this variable set to 0 selects it, read by `import ray` and by every process the cluster starts.
RAY_MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CLUSTER_CONNECT_SECONDS = 5


def _is_loopback(address: str | None) -> bool:
    """Whether a cluster address (``host:port``; None: a cluster started here) is on this machine's loopback."""
    if address is None or address == "local":
        return True
    host, _ = _host_and_port(address)
    return (host or str(address)) in ("localhost", "127.0.0.1", "::1")


def _host_and_port(address: str) -> tuple[str, str]:
    """``host:port``, ``ray://host:port`` or ``[::1]:port`` -> (host without brackets, port as written)."""
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    return host.strip("[]"), port


@contextlib.contextmanager
def _ray_on_loopback(loopback: bool) -> Iterator[None]:
    """Within: Ray in its single-machine mode when ``loopback`` (its processes listen on 127.0.0.1 only), as it was
    before on exit. A cluster address on another host leaves Ray as it is: its nodes must reach this driver."""
    if not loopback:
        yield
        return
    before = os.environ.get(RAY_MULTI_NODE_ENV)
    os.environ[RAY_MULTI_NODE_ENV] = "0"
    from ray._private import ray_constants  # read at its import: set it too where ray was imported before

    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node
        if before is None:
            os.environ.pop(RAY_MULTI_NODE_ENV, None)
        else:
            os.environ[RAY_MULTI_NODE_ENV] = before


def _check_cluster_answers(address: str) -> None:
    """A one-line error when nothing listens at a cluster address: ray.init retries such an address for minutes."""
    host, port = _host_and_port(address)
    if not (host and port.isdigit()):
        raise ConfigError("cluster.address", f"expected HOST:PORT (e.g. 127.0.0.1:6379), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CLUSTER_CONNECT_SECONDS).close()
    except OSError as error:
        raise UserError(f"cluster.address={address}: no Ray cluster answers there ({error})") from None


def _ray_token_auth_if_available() -> None:
    """Turn on Ray's token authentication for joining a cluster on this machine when this user has a token and
    RAY_AUTH_MODE is not set. Ray does so itself only for a cluster it finds (``address="auto"``), never for a
    given address, yet a cluster started by ``ray.init`` (token mode by default in Ray 2.60) or by ``ray start``
    with a token present requires it. Ray versions without token authentication have nothing to turn on."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def ray_worker_setup() -> None:
    """Run in every Ray worker of a curation run: datatrove runs each task in a process pool, and a process forked
    from a Ray worker (many threads) can deadlock on a lock held at fork time; forkserver children start clean."""
    import multiprocess

    multiprocess.set_start_method("forkserver", force=True)


def _run_on_slurm(stages: list[Stage], output: Path, workers: int, options: dict[str, Any], wait: bool) -> None:
    """Submit the stages as Slurm job arrays, each stage after the previous one (``--dependency=afterok``), through
    datatrove's SlurmPipelineExecutor (``cluster.*`` are its keyword arguments). With ``wait``, wait for them (and
    first for the jobs of an earlier submission still queued). On-the-spot training runs here between stages, so a
    later stage that needs it waits for the stages before it."""
    from datatrove.executor import SlurmPipelineExecutor

    from slmtrain import slurm

    if not options.get("partition"):
        raise ConfigError("cluster.partition", "required for executor=slurm (e.g. cluster.partition=cpu)")
    _split_options(options, {"SlurmPipelineExecutor": SlurmPipelineExecutor})
    if not wait and any(stage.before for stage in stages[1:]):
        raise ConfigError("wait", "this pipeline trains a model between stages, in this process: use wait=true")
    names = [slurm_job_name(output, stage.name) for stage in stages]
    if queued := slurm.queued_jobs(names):
        if not wait:
            raise UserError(f"jobs of this run are still queued or running ({', '.join(j.id for j in queued)}): "
                            "re-run with wait=true to wait for them, or scancel them")
        slurm.wait_for_jobs(names)
    # the jobs run this environment's Python (launch_pickled_pipeline); sbatch exports this process' variables
    activate = Path(sys.prefix) / "bin" / "activate"
    defaults = {"time": "24:00:00", "qos": "", **({"venv_path": str(activate)} if activate.is_file() else {})}
    chain: SlurmPipelineExecutor | None = None
    for stage, name in zip(stages, names):
        if stage.before and chain is not None:  # the stages so far must have finished
            chain.launch_job()
            slurm.wait_for_jobs(names)
            for done in stages[: stages.index(stage)]:
                _check_stage_complete(done, output)
            chain = None
        for prepare in stage.before:
            prepare()
        chain = SlurmPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=str(output / "logs" / stage.name),
                                      depends=chain, workers=workers, **{**defaults, "job_name": name, **options})
    chain.launch_job()
    if wait:
        slurm.wait_for_jobs(names)
        for stage in stages:
            _check_stage_complete(stage, output)


def slurm_job_name(output: Path, stage: str) -> str:
    """Unique to the run (its output folder), so that its jobs can be found in the queue."""
    return f"curate_{stage}_{hashlib.sha256(str(output).encode()).hexdigest()[:8]}"


def _split_options(options: dict[str, Any], targets: dict[str, Callable]) -> dict[str, dict[str, Any]]:
    """``cluster.*`` keys, each to the function or class whose parameter it names; an unknown key is an error."""
    split: dict[str, dict[str, Any]] = {name: {} for name in targets}
    set_here = {"self", "kwargs", "pipeline", "tasks", "workers", "logging_dir", "depends", "job_name"}
    valid = {name: set(inspect.signature(target).parameters) - set_here for name, target in targets.items()}
    for key, value in options.items():
        owner = next((name for name in targets if key in valid[name]), None)
        if owner is None:
            raise ConfigError(f"cluster.{key}", "unknown key; valid keys: " + "; ".join(
                f"{name}: {', '.join(sorted(keys))}" for name, keys in valid.items()))
        split[owner][key] = value
    return split


def _check_stage_complete(stage: Stage, output: Path) -> None:
    completions = output / "logs" / stage.name / "completions"
    missing = [rank for rank in range(stage.tasks) if not (completions / f"{rank:05d}").is_file()]
    if missing:
        raise UserError(f"stage {stage.name}: {len(missing)} of {stage.tasks} tasks did not finish (logs: "
                        f"{output / 'logs' / stage.name}); re-run the same command to run only those")


# --------------------------------------------------------------------------------------------------------------
# Stats: the per-step table, JSON and plot


def collect_stats(stages: list[Stage], output: Path, pipeline: str, source: str, seconds: float) -> CurationStats:
    """Per-step rows (in, kept, removed by reason, seconds) from the stages' datatrove stats, and the totals."""
    rows: list[StepStats] = []
    dedup_seconds = 0.0
    for stage in stages:
        step_stats = _stage_stats(stage, output)
        if not stage.rows:  # a MinHash bucket/cluster stage: its time goes to the dedup row
            dedup_seconds += sum(_seconds(s) for s in step_stats)
            continue
        for index, name in stage.rows.items():
            counts = step_stats[index]["stats"] if index < len(step_stats) else {}
            step_seconds = _seconds(step_stats[index]) if index < len(step_stats) else 0.0
            if name == "read":
                kept, rejected = _count(counts, "documents"), _count(counts, "rejected")
                rows.append(StepStats(name, kept + rejected, kept, 0, round(step_seconds, 3), rejected=rejected,
                                      rejected_by_reason=_by_prefix(counts, "rejected_")))
                continue
            if isinstance(stage.pipeline[index], MinhashDedupFilter):
                step_seconds, dedup_seconds = step_seconds + dedup_seconds, 0.0
            removed = _count(counts, "dropped")
            by_reason = _by_prefix(counts, "dropped_")
            if unexplained := removed - sum(by_reason.values()):  # the step's criterion, without a finer reason
                by_reason[name] = unexplained
            # steps that only rewrite text (pii) count 'total' but not 'forwarded'
            kept = _count(counts, "forwarded") if "forwarded" in counts else _count(counts, "total") - removed
            rows.append(StepStats(name, _count(counts, "total"), kept, removed, round(step_seconds, 3), by_reason))
        for index, step in enumerate(stage.pipeline[: len(step_stats)]):  # after the rows: the next dedup's time
            if isinstance(step, MinhashDedupSignature):  # the signatures, after the stage's writer: its time
                # covers the steps before it too (it pulls their documents), whose own times are subtracted; the
                # reads they do not time stay in it
                upstream = sum(_seconds(s) for s in step_stats[:index])
                dedup_seconds += max(0.0, _seconds(step_stats[index]) - upstream)
    totals = Totals(rows[0].documents_in, rows[-1].kept, sum(row.removed for row in rows), rows[0].rejected)
    return CurationStats(pipeline, source, str(output), round(seconds, 2), rows, totals)


def _stage_stats(stage: Stage, output: Path) -> list[dict]:
    """The stage's per-step stats summed over its tasks' own files: a resumed run counts the tasks of earlier runs,
    whichever executor ran them."""
    task_files = [output / "logs" / stage.name / "stats" / f"{rank:05d}.json" for rank in range(stage.tasks)]
    found = [PipelineStats.from_json(json.loads(path.read_text())) for path in task_files if path.is_file()]
    return [step.to_dict() for step in sum(found, start=PipelineStats()).stats]


def _seconds(step_stats: dict) -> float:
    timing = step_stats["time_stats"]  # a bare 0 when the step saw no documents
    return float(timing.get("total", 0.0) if isinstance(timing, dict) else timing)


def _count(counts: dict, key: str) -> int:
    value = counts.get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def _by_prefix(counts: dict, prefix: str) -> dict[str, int]:
    return {key.removeprefix(prefix): _count(counts, key) for key in counts if key.startswith(prefix)}


def format_table(stats: CurationStats) -> str:
    lines = [f"{'step':<20} {'in':>9} {'kept':>9} {'removed':>9} {'seconds':>9}  removed by reason"]
    for row in stats.steps:
        reasons = row.rejected_by_reason if row.step == "read" else row.removed_by_reason
        named = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"{row.step:<20} {row.documents_in:>9} {row.kept:>9} {row.removed:>9} {row.seconds:>9.2f}  "
                     + (f"(rejected: {named})" if row.step == "read" and named else named))
    t = stats.totals
    lines.append(f"documents in {t.documents_in} = kept {t.kept} + removed {t.removed} + rejected {t.rejected}"
                 + ("" if t.balanced else "  (UNBALANCED: see logs/)"))
    return "\n".join(lines)


def plot_stats(stats: CurationStats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stats.steps
    names = [row.step for row in rows]
    fig, (counts_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2), sharey=True)
    counts_ax.barh(names, [row.kept for row in rows], label="kept")
    counts_ax.barh(names, [row.removed for row in rows], left=[row.kept for row in rows], label="removed")
    counts_ax.set_xlabel("documents")
    counts_ax.legend()
    counts_ax.invert_yaxis()
    time_ax.barh(names, [row.seconds for row in rows], color="gray")
    time_ax.set_xlabel("seconds (summed over tasks)")
    fig.suptitle(f"{stats.pipeline}: kept {stats.totals.kept} of {stats.totals.documents_in}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

