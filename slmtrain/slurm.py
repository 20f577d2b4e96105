"""Slurm's command-line clients (sbatch, squeue, scancel) as curation and training use them: submit a job script,
see which of a run's jobs are still queued, wait for them."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from slmtrain.config import UserError


@dataclass(frozen=True)
class QueuedJob:
    id: str  # an array task shows as JOBID_TASK
    name: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str  # why a pending job waits (Dependency, Resources, DependencyNeverSatisfied, ...)


def _slurm(*args: str, script: str | None = None) -> str:
    """Run a Slurm client; its own error message, in one line, when it fails."""
    if shutil.which(args[0]) is None:
        raise UserError(f"{args[0]} not found: Slurm's client tools must be on PATH (see .ci/slurm-up.sh for a "
                        "single-node cluster)")
    done = subprocess.run(args, input=script, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"{args[0]} failed: {' '.join((done.stderr or done.stdout).split())}")
    return done.stdout


def submit(script: str) -> str:
    """sbatch a job script (given as text); return the job id."""
    return _slurm("sbatch", "--parsable", script=script).strip().split(";")[0]  # "ID" or "ID;CLUSTER"


def queued_jobs(names: list[str]) -> list[QueuedJob]:
    """The jobs with these names that have not ended (squeue lists only those)."""
    out = _slurm("squeue", "--noheader", f"--name={','.join(names)}", "--format=%i|%j|%T|%r")
    return [QueuedJob(*line.split("|", 3)) for line in out.splitlines() if line.strip()]


def wait_for_jobs(names: list[str], poll_seconds: float = 1.0) -> None:
    """Return once no job with these names is queued or running. A job that can never start (a job it depends on
    failed or was cancelled) is cancelled, so that waiting ends."""
    while jobs := queued_jobs(names):
        if stuck := [job.id for job in jobs if job.reason == "DependencyNeverSatisfied"]:
            _slurm("scancel", *stuck)
        time.sleep(poll_seconds)
