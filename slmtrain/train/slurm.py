"""Training on a Slurm cluster: the sbatch job script that runs ``launch/train.py`` once per task through ``srun``.

Lightning's SLURM environment plugin reads the ranks from what srun sets (SLURM_PROCID, SLURM_LOCALID,
SLURM_NODEID, SLURM_NTASKS, SLURM_NODELIST; the master is the first node), so the script only has to make the
Trainer's devices and nodes agree with the job's tasks. A requeued job (preemption, ``scontrol requeue``, a node
failure with ``--requeue``) runs the script again, which then resumes from the run's last checkpoint.

    python launch/train.py recipe=NAME ... launcher=slurm slurm.nodes=2 slurm.ntasks_per_node=8 slurm.gpus_per_node=8
    python launch/train.py recipe=NAME ... print_sbatch=true [slurm.*=...]   # the script, to read or adapt
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmtrain import slurm
from slmtrain.config import ConfigError, build
from slmtrain.train.config import TrainConfig, load_recipe
from slmtrain.train.run import LAST_CHECKPOINT

# train-argument keys that choose how to launch, not what to train: the job's own command line drops them
LAUNCH_KEYS = ("launcher", "print_sbatch", "ckpt")


@dataclass
class SlurmOptions:
    nodes: int = 1  # nodes of the job (sbatch --nodes): the Trainer's num_nodes
    ntasks_per_node: int = 1  # training processes per node: one per GPU, or DDP processes on CPU cores
    gpus_per_node: int = 0  # 0: CPU training (accelerator=cpu)
    cpus_per_task: int = 1  # cores per process, also its OMP_NUM_THREADS
    partition: str = ""  # empty: the cluster's default partition
    time: str = "24:00:00"  # the job's time limit (sbatch --time)
    mem_per_cpu: str = ""  # e.g. 4G; empty: the cluster's default
    job_name: str = ""  # empty: the run's name
    requeue: bool = True  # sbatch --requeue: a preempted job is queued again and resumes from ckpt=last
    sbatch: list[str] = field(default_factory=list)  # more sbatch options, e.g. [--account=proj,--qos=high]

    def __post_init__(self) -> None:
        for key in ("nodes", "ntasks_per_node", "cpus_per_task"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise ConfigError("gpus_per_node", "must be >= 0")


def sbatch_script(config: TrainConfig, train_argv: list[str], options: SlurmOptions) -> str:
    """The job script for this run; ``train_argv`` are launch/train.py's arguments (the launch keys are dropped)."""
    run_dir = config.run_path
    world = options.nodes * options.ntasks_per_node
    placement = {"trainer.num_nodes": options.nodes, "trainer.devices": options.ntasks_per_node,
                 "trainer.accelerator": "gpu" if options.gpus_per_node else "cpu"}
    if world > 1 and config.strategy == "auto":
        placement["strategy"] = "ddp"
    kept = [arg for arg in train_argv if arg.partition("=")[0] not in LAUNCH_KEYS and not arg.startswith("slurm.")]
    argv = kept + [f"{key}={value}" for key, value in placement.items()]
    directives = {
        "job-name": options.job_name or config.name,
        "nodes": options.nodes,
        "ntasks-per-node": options.ntasks_per_node,
        "cpus-per-task": options.cpus_per_task,
        "time": options.time,
        "chdir": Path.cwd(),
        "output": run_dir / "slurm-%j.out",  # the run directory must exist when the job starts
        "open-mode": "append",  # a requeued job adds to its log
        **({"partition": options.partition} if options.partition else {}),
        **({"gpus-per-node": options.gpus_per_node} if options.gpus_per_node else {}),
        **({"mem-per-cpu": options.mem_per_cpu} if options.mem_per_cpu else {}),
    }
    lines = [f"#SBATCH --{key}={value}" for key, value in directives.items()]
    lines += ["#SBATCH --requeue"] * options.requeue + [f"#SBATCH {option}" for option in options.sbatch]
    checkpoint = shlex.quote(str(run_dir / LAST_CHECKPOINT))
    command = shlex.join([sys.executable, "-m", "slmtrain", "train", *argv])
    return "\n".join([
        "#!/bin/bash",
        f"# slmtrain: run {config.name} on {options.nodes} node(s) x {options.ntasks_per_node} process(es).",
        "# srun starts one launch/train.py per task; Lightning's SLURM environment plugin gives each its rank.",
        *lines,
        "set -euo pipefail",
        "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK",
        "resume=()",
        f"if [ -f {checkpoint} ]; then  # a requeued job continues the run",
        f'    echo "resuming from {checkpoint} (restart ${{SLURM_RESTART_COUNT:-0}})"',
        "    resume=(ckpt=last)",
        "fi",
        f'srun {command} "${{resume[@]}}"',
        "",
    ])


def launch_on_slurm(recipe: str | None, overrides: dict[str, Any], slurm_args: dict[str, Any], train_argv: list[str],
                    print_only: bool) -> str:
    """Submit the run as a Slurm job (or only return its script); returns what to tell the user."""
    if "grid" in overrides:
        raise ConfigError("launcher", "grid runs are not submitted to Slurm: submit one run per command")
    try:
        options = build(SlurmOptions, slurm_args)
    except ConfigError as error:
        raise error.under("slurm") from None
    config = load_recipe(recipe, overrides)
    script = sbatch_script(config, train_argv, options)
    if print_only:
        return script
    config.run_path.mkdir(parents=True, exist_ok=True)
    job = slurm.submit(script)
    return f"submitted Slurm job {job}: log {config.run_path / f'slurm-{job}.out'}"
