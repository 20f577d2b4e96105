"""A curation pipeline's declaration (``data_filters/NAME.yaml`` plus command-line overrides) and its stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from datatrove.pipeline.base import PipelineStep

from slmtrain.config import DECLARATIONS_DIR, ConfigError, build, load_declaration, merge
from slmtrain.data.curate.steps import STEP_TYPES

FILTERS_DIR = DECLARATIONS_DIR / "data_filters"


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
    """A built-in pipeline by name (``data_filters/NAME.yaml``) or a YAML file by path, with ``overrides`` merged."""
    mapping = load_declaration("filter", name_or_path, FILTERS_DIR)
    return build(PipelineConfig, merge(mapping, overrides or {}))
