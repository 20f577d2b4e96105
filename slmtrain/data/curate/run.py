"""``run_pipeline``, the one entry point of curation: load the declaration, resolve the input, build the stages,
check every step, run the stages on the chosen executor, then collect, write and check the stats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from slmtrain.config import ConfigError, UserError
from slmtrain.data.curate.config import PipelineConfig, Stage, load_pipeline_config
from slmtrain.data.curate.executors.common import quiet_console
from slmtrain.data.curate.executors.local import run_local
from slmtrain.data.curate.executors.ray import run_on_ray
from slmtrain.data.curate.executors.slurm import run_on_slurm, slurm_job_name
from slmtrain.data.curate.source import resolve_input
from slmtrain.data.curate.stages import build_stages
from slmtrain.data.curate.stats import CurationStats, collect_stats, plot_stats
from slmtrain.data.filters.extractors import raise_on_mass_removal

EXECUTORS = ("local", "slurm", "ray")


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
    source = resolve_input(config, input, output)
    stages = build_stages(config, source, output, workers)
    for stage in stages:  # every step before any stage runs: a broken one would fail deep inside every task
        for check in stage.checks:
            check()
    _check_same_run(output, config, source, stages)
    console_log = None if verbose else output / "curate.log"
    with quiet_console(console_log):
        if executor == "local":
            run_local(stages, output, workers, console_log)
        elif executor == "ray":
            run_on_ray(stages, output, workers, config.cluster)
        else:
            run_on_slurm(stages, output, workers, config.cluster, wait)
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
