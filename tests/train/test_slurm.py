"""Training submitted to the single-node Slurm cluster of .ci/slurm-up.sh: 2 CPU processes under srun train as the
same run started by torchrun does, and a requeued job resumes from its last checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmtrain.slurm import queued_jobs, wait_for_jobs
from tests.train.test_train import train_losses
from tests.output import diagnostics

# one worker runs every test of the Slurm cluster, one after the other (pytest -n 2 --dist loadgroup): it has two
# CPUs, and a second run of jobs beside another would wait behind it
pytestmark = pytest.mark.xdist_group("slurm")

REPO = Path(__file__).resolve().parents[2]
STEPS = 32  # the tiny model takes a fraction of a second per step on 2 processes: time to requeue it mid-way
def one_thread_env() -> dict[str, str]:
    """The environment now, one thread: read at each call, after the slurm_cluster fixture has set SLURM_CONF (a copy
    taken at import left sbatch without a configuration when the cluster was not started beforehand)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_args(shards: Path, run_dir: Path) -> list[str]:
    return [
        "recipe=demo", f"run_dir={run_dir}", f"name={run_dir.parent.name}", "model.preset=tiny",
        "model.vocab_size=512", "model.max_seq_len=64", f"data.shards={shards}", "data.build=none", "data.seq_len=64",
        "data.val_samples=8", "batch.tokens=512", "batch.micro_batch=2", "optim.lr=1e-2", "schedule.kind=cosine",
        "schedule.warmup_steps=2", f"budget.tokens={512 * STEPS}", "trainer.enable_progress_bar=false",
        "log_every_n_steps=1", "val_every_n_steps=8", "ckpt_every_n_steps=4", "samples=0", "export_hf=false",
        "eval.tasks=[]",
    ]


def submit(shards: Path, run_dir: Path) -> str:
    """launch/train.py launcher=slurm with 2 tasks on 1 node; returns the job's name."""
    done = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *train_args(shards, run_dir),
                           "launcher=slurm", "slurm.nodes=1", "slurm.ntasks_per_node=2", "slurm.time=00:10:00"],
                          capture_output=True, text=True, cwd=REPO, env=one_thread_env(), timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("submitted Slurm job"), done.stdout + done.stderr
    return run_dir.parent.name


@pytest.fixture(scope="module")
def torchrun_losses(shards, tmp_path_factory) -> dict[int, str]:
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(REPO / "launch" / "train.py"),
                           *train_args(shards, run_dir), "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
                          capture_output=True, text=True, cwd=REPO, env=one_thread_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_print_sbatch_shows_the_job_script(shards, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *train_args(shards, tmp_path / "run"),
                           "print_sbatch=true", "slurm.nodes=2", "slurm.ntasks_per_node=4", "slurm.gpus_per_node=4",
                           "slurm.partition=gpu", "slurm.sbatch=[--account=proj]"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --requeue", "#SBATCH --account=proj", "resume=(ckpt=last)"):
        assert line in script.splitlines() or f"    {line}" in script.splitlines(), line
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "trainer.num_nodes=2 trainer.devices=4 trainer.accelerator=gpu strategy=ddp" in srun
    assert "ckpt_every_n_steps=4" in srun and " print_sbatch=" not in srun and " slurm." not in srun
    assert not (tmp_path / "run").exists()  # printing submits nothing
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "launcher=slurm", "slurm.nodes=0"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and diagnostics(bad.stderr).strip() == "error: slurm.nodes: must be >= 1, got 0"


def test_the_daemons_listen_on_loopback_only(slurm_cluster):
    ports = {f"{port:04X}" for port in (6817, 6818)}  # slurmctld's and slurmd's, as /proc/net/tcp writes them
    listening = [row.split()[1] for row in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if row.split()[3] == "0A" and row.split()[1].split(":")[1] in ports]  # 0A: LISTEN
    assert len(listening) == 2 and all(address.startswith("0100007F:") for address in listening), listening


def test_srun_ddp_losses_equal_torchrun(shards, tmp_path, torchrun_losses, slurm_cluster):
    run_dir = tmp_path / "slurm_ddp" / "run"
    name = submit(shards, run_dir)
    try:
        wait_for_jobs([name])
    finally:
        subprocess.run(["scancel", f"--name={name}"], check=True)
    log = next(run_dir.glob("slurm-*.out")).read_text()
    lightning_log = (run_dir / "train.log").read_text()  # both ranks' Lightning logging, off the terminal
    assert "MEMBER: 1/2" in lightning_log and "MEMBER: 2/2" in lightning_log, lightning_log[-3000:]  # from srun
    assert log.count('"val_loss"') == 1 and log.count("config: ") == 1, log[-3000:]  # rank 0 alone speaks
    assert train_losses(run_dir) == torchrun_losses


def test_requeued_job_resumes_from_last_checkpoint(shards, tmp_path, torchrun_losses, slurm_cluster):
    run_dir = tmp_path / "slurm_requeue" / "run"
    name = submit(shards, run_dir)
    try:
        deadline = time.time() + 110
        while time.time() < deadline:  # requeue once a checkpoint is written, before the end
            if (run_dir / "metrics.csv").is_file() and max(train_losses(run_dir), default=0) >= 6:
                break
            time.sleep(0.05)
        (job,) = queued_jobs([name])
        subprocess.run(["scontrol", "requeue", job.id], check=True)  # what a preemption with --requeue does
        wait_for_jobs([name])
    finally:
        subprocess.run(["scancel", f"--name={name}"], check=True)
    log = next(run_dir.glob("slurm-*.out")).read_text()
    assert "DUE TO JOB REQUEUE" in log and "resuming from" in log and "(restart 1)" in log, log[-3000:]
    assert train_losses(run_dir) == torchrun_losses, log[-3000:] + (run_dir / "train.log").read_text()[-3000:]
