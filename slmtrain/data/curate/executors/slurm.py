"""The Slurm executor: the stages as job arrays, each after the one before (``--dependency=afterok``), through
datatrove's SlurmPipelineExecutor. The jobs outlive this process: without ``wait`` the run returns once they are
submitted, and finds them again in the queue by their names (unique to the run's output folder)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from slmtrain.config import ConfigError, UserError
from slmtrain.data.curate.config import Stage
from slmtrain.data.curate.executors.common import check_stage_complete, split_options


def run_on_slurm(stages: list[Stage], output: Path, workers: int, options: dict[str, Any], wait: bool) -> None:
    """Submit the stages as Slurm job arrays, each stage after the previous one (``--dependency=afterok``), through
    datatrove's SlurmPipelineExecutor (``cluster.*`` are its keyword arguments). With ``wait``, wait for them (and
    first for the jobs of an earlier submission still queued). On-the-spot training runs here between stages, so a
    later stage that needs it waits for the stages before it."""
    from datatrove.executor import SlurmPipelineExecutor

    from slmtrain import slurm

    if not options.get("partition"):
        raise ConfigError("cluster.partition", "required for executor=slurm (e.g. cluster.partition=cpu)")
    split_options(options, {"SlurmPipelineExecutor": SlurmPipelineExecutor})  # unknown keys, before submitting
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
                check_stage_complete(done, output)
            chain = None
        for prepare in stage.before:
            prepare()
        chain = SlurmPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=str(output / "logs" / stage.name),
                                      depends=chain, workers=workers, **{**defaults, "job_name": name, **options})
    chain.launch_job()
    if wait:
        slurm.wait_for_jobs(names)
        for stage in stages:
            check_stage_complete(stage, output)


def slurm_job_name(output: Path, stage: str) -> str:
    """Unique to the run (its output folder), so that its jobs can be found in the queue."""
    return f"curate_{stage}_{hashlib.sha256(str(output).encode()).hexdigest()[:8]}"
