"""Curation on real engines: a local Ray cluster and the single-node Slurm cluster of .ci/slurm-up.sh give the same
kept, removed and rejected documents as the local executor, including after a killed worker or a cancelled job."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from slmtrain.config import ConfigError
from slmtrain.data.curate import run_pipeline
from slmtrain.data.curate.executors.ray import RAY_MULTI_NODE_ENV, _is_loopback
from slmtrain.data.demo import write_demo_documents
from slmtrain.slurm import queued_jobs
from tests.output import diagnostics
from tests.paths import REPO_ROOT

# With pytest -n 2 --dist loadgroup, the tests of each cluster run one after the other on one worker: the Ray
# tests each start or join a two-CPU cluster, and the single-node Slurm cluster has two CPUs, so a second run of
# jobs beside another would wait behind it.
RAY_TESTS, SLURM_TESTS = pytest.mark.xdist_group("ray"), pytest.mark.xdist_group("slurm")

PAGES = 300  # demo pages: FineWeb's filters keep ~40 of them, the demo pipeline ~150
# Quicker runs: pages over 20k characters are rejected (Gopher's repetition filter is slow on them) and the MinHash
# runs 2 bucket tasks instead of 14 (fewer jobs to start).
QUICK = {"max_doc_chars": 20_000, "steps": {"minhash": {"num_buckets": 2}}}
RAY = {"num_cpus": 2, "object_store_memory": 200_000_000, "include_dashboard": False}  # a small local cluster


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """300 demo pages in 3 files (3 tasks), plus a corrupt line (a rejected document)."""
    root = tmp_path_factory.mktemp("pages")
    lines = (write_demo_documents(root / "all", max_docs=PAGES) / "demo-00000.jsonl").read_bytes().splitlines()
    (root / "pages").mkdir()
    for k in range(3):
        (root / "pages" / f"part{k}.jsonl").write_bytes(b"\n".join(lines[k::3] + [b"{broken"] * (k == 0)) + b"\n")
    return root / "pages"


def outcome(out: Path) -> dict:
    """What a run decided: its totals, the documents each step removed and the ids of the kept documents."""
    stats = json.loads((out / "stats.json").read_text())
    kept = [orjson.loads(line)["id"] for p in (out / "kept").glob("*.jsonl.gz") for line in gzip.open(p)]
    assert len(kept) == len(set(kept)) == stats["totals"]["kept"]  # no document twice
    assert (out / "stats.png").stat().st_size > 1_000
    return {"totals": stats["totals"], "removed": {row["step"]: row["removed"] for row in stats["steps"]},
            "kept": sorted(kept)}


@pytest.fixture(scope="module")
def local(pages, tmp_path_factory):
    """The local executor's outcome for a pipeline, computed once."""
    outcomes: dict[str, dict] = {}

    def run(pipeline: str) -> dict:
        if pipeline not in outcomes:
            out = tmp_path_factory.mktemp("local") / pipeline
            run_pipeline(pipeline, pages, out, QUICK, workers=2)
            outcomes[pipeline] = outcome(out)
            assert outcomes[pipeline]["totals"]["kept"] > 20 and outcomes[pipeline]["totals"]["rejected"] > 1
        return outcomes[pipeline]

    return run


@pytest.fixture()
def no_usage_stats(monkeypatch) -> None:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


class Listeners:
    """The TCP sockets that the processes under the given roots listen on, sampled every 0.1 s while in the block:
    {(process name, address)}."""

    def __init__(self, *roots: int):
        self.roots, self.seen, self._stop = roots, set(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for root in self.roots:
                try:
                    processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for proc in processes:
                    with contextlib.suppress(psutil.Error):
                        self.seen |= {(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet")
                                      if c.status == psutil.CONN_LISTEN}

    def __enter__(self) -> Listeners:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def assert_loopback_only(self) -> None:
        names = {name for name, _ in self.seen}
        assert {"gcs_server", "raylet"} <= names, self.seen  # the cluster's servers were seen
        assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in self.seen), self.seen


@RAY_TESTS
def test_ray_local_cluster_matches_local_executor(pages, local, tmp_path, no_usage_stats):
    """The demo pipeline (it trains its fastText model between stages) on a cluster the run starts; fineweb runs
    on a joined cluster below (each Ray run takes minutes here: every task is a new process)."""
    pipeline = "demo"
    import ray  # imported before the run: it still keeps the cluster on the loopback

    with Listeners(os.getpid()) as listeners:
        stats = run_pipeline(pipeline, pages, tmp_path / "ray", {**QUICK, "cluster": RAY}, executor="ray", workers=2)
    assert stats.executor == "ray" and not ray.is_initialized()  # the cluster it started is gone
    listeners.assert_loopback_only()
    assert outcome(tmp_path / "ray") == local(pipeline)
    assert sorted(p.name for p in (tmp_path / "ray" / "logs" / "filter_1" / "stats").iterdir()) == [
        "00000.json", "00001.json", "00002.json"]


def test_only_a_cluster_on_this_machine_is_kept_on_the_loopback():
    assert all(map(_is_loopback, [None, "local", "127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001"]))
    assert not any(map(_is_loopback, ["10.0.0.5:6379", "head.cluster:6379", "ray://head.cluster:10001"]))


def test_a_cluster_address_where_nothing_answers_is_a_one_line_error(tmp_path):
    (tmp_path / "page.jsonl").write_text('{"id": "0", "text": "A page."}\n')
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    for address, error in [(f"127.0.0.1:{port}", f"cluster.address=127.0.0.1:{port}: no Ray cluster answers there"),
                           ("127.0.0.1", "cluster.address: expected HOST:PORT (e.g. 127.0.0.1:6379), got '127.0.0.1'")]:
        done = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "curate.py"), "filter=fineweb",
                               f"input={tmp_path / 'page.jsonl'}", f"output={tmp_path / 'out'}", "executor=ray",
                               f"cluster.address={address}"], capture_output=True, text=True, timeout=120)
        lines = diagnostics(done.stderr).strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"error: {error}"), done.stderr
    assert time.monotonic() - started < 60  # ray.init alone retries such an address for minutes
    assert not (tmp_path / "out" / "kept").exists()


HOLD_CLUSTER = """
import ray, sys
ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


def rank_worker_pids() -> list[int]:
    """Ray worker processes running a datatrove task (the actor, not the pool process it forks)."""
    titles = {}
    for proc in Path("/proc").iterdir():
        try:
            titles[int(proc.name)] = ((proc / "cmdline").read_bytes(), int((proc / "stat").read_text().split()[3]))
        except (ValueError, OSError):
            continue
    busy = {pid for pid, (cmdline, _) in titles.items() if cmdline.startswith(b"ray::RankWorker.run_for_rank")}
    return [pid for pid in busy if titles[pid][1] not in busy]


@RAY_TESTS
def test_ray_joined_cluster_survives_a_killed_worker(pages, local, tmp_path, no_usage_stats):
    """A running cluster is joined with cluster.address=; a worker SIGKILLed mid-task is retried, and the output
    is the local executor's, with no document lost or written twice."""
    # a cluster on this machine only, as README says to start one (Ray's single-machine mode)
    # RAY_AUTH_MODE unset, as on a user's machine: Ray 2.60 starts the cluster with token authentication, and the
    # run must turn it on to join (Ray itself never does for a given address)
    environ = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**environ, "RAY_USAGE_STATS_ENABLED": "0", RAY_MULTI_NODE_ENV: "0"})
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        killed: list[int] = []

        def kill_the_first_busy_worker() -> None:
            deadline = time.time() + 90
            while not killed and time.time() < deadline:
                if pids := rank_worker_pids():
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                time.sleep(0.02)

        refused = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "curate.py"), "filter=fineweb",
                                  f"input={pages}", f"output={tmp_path / 'refused'}", "executor=ray",
                                  f"cluster.address={address}"], capture_output=True, text=True, timeout=300,
                                 env={**environ, "RAY_AUTH_MODE": "disabled"})  # a driver without the token
        # Ray's own retry warnings come first (not one line yet); the run's error is the last line
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode != 0, refused.stderr[-3000:]
        assert last.startswith(f"error: cluster.address={address}: cannot join the Ray cluster: "), last
        assert last.endswith("needs RAY_AUTH_MODE=token and its token)"), last
        killer = threading.Thread(target=kill_the_first_busy_worker, daemon=True)
        killer.start()
        # the command line, in a process of its own: a driver that has not started a cluster before (ray.init of a
        # new cluster leaves this process' token-authentication settings changed)
        with Listeners(holder.pid, os.getpid()) as listeners:
            done = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "curate.py"), "filter=fineweb",
                                   f"input={pages}", f"output={tmp_path / 'ray'}", "executor=ray", "workers=2",
                                   f"cluster.address={address}", f"max_doc_chars={QUICK['max_doc_chars']}",
                                   "steps.minhash.num_buckets=2"], capture_output=True, text=True,
                                  timeout=600, env=environ)  # a killed worker's task is redone: 150 s alone here
        killer.join(timeout=1)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert address.startswith("127.0.0.1:")
        listeners.assert_loopback_only()  # the cluster's servers and the run's driver
        assert killed, "no Ray worker was seen running a task"
        assert outcome(tmp_path / "ray") == local("fineweb")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


SLURM = {"cluster": {"partition": "cpu", "time": "00:10:00"}}


@pytest.fixture()
def slurm_jobs(slurm_cluster) -> Iterator[list[str]]:
    """The job names of the runs a test submits: whatever is left of them is cancelled at the end."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["scancel", f"--name={name}"], check=True)


def dependencies(names: list[str]) -> dict[str, str]:
    """Job name -> the dependencies it still waits for, as squeue shows them."""
    out = subprocess.run(["squeue", "--noheader", f"--name={','.join(names)}", "--format=%j|%E"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|") for line in out.splitlines())


@SLURM_TESTS
def test_slurm_jobs_cancelled_resume_when_run_again_and_match_the_local_executor(pages, local, tmp_path, slurm_jobs):
    """A chain of job arrays, cancelled mid-way (scancel) and run again with wait=true: the jobs that had not
    finished run, and the output is the local executor's."""
    with pytest.raises(ConfigError, match="cluster.partition: required for executor=slurm"):
        run_pipeline("fineweb", pages, tmp_path / "no_partition", executor="slurm")
    with pytest.raises(ConfigError, match="cluster.bogus: unknown key; valid keys: SlurmPipelineExecutor: .*partition"):
        run_pipeline("fineweb", pages, tmp_path / "bogus", {"cluster": {"partition": "cpu", "bogus": 1}},
                     executor="slurm")
    out, completions = tmp_path / "slurm", tmp_path / "slurm" / "logs" / "filter_1" / "completions"
    submitted = run_pipeline("fineweb", pages, out, {**QUICK, **SLURM}, executor="slurm", workers=2)
    slurm_jobs += submitted.jobs
    waits = dependencies(submitted.jobs)
    assert all(waits[name].startswith("afterok:") for name in submitted.jobs[1:])  # each after the one before
    deadline = time.time() + 90
    while time.time() < deadline and not (completions.is_dir() and any(completions.iterdir())):
        time.sleep(0.2)
    job_ids = {job.id.split("_")[0] for job in queued_jobs(submitted.jobs)}
    subprocess.run(["scancel", *job_ids], check=True)
    deadline = time.time() + 30
    while queued_jobs(submitted.jobs) and time.time() < deadline:
        time.sleep(0.5)
    done_before = len(list(completions.iterdir()))
    assert not queued_jobs(submitted.jobs) and not (out / "logs" / "filter_2" / "completions").exists()

    stats = run_pipeline("fineweb", pages, out, {**QUICK, **SLURM}, executor="slurm", workers=2, wait=True)
    assert stats.executor == "slurm" and outcome(out) == local("fineweb")
    logs = out / "logs"
    script = (logs / "filter_2" / "launch_script.slurm").read_text()  # a stage the cancel left whole
    assert "#SBATCH --array=0-2%2" in script and "srun" in script and "launch_pickled_pipeline" in script
    job_logs = sorted(p.name for p in (logs / "minhash_1_buckets" / "slurm_logs").glob("*.out"))
    assert len(job_logs) == 3  # 2 array tasks and the job that merges their stats
    if done_before < 3:  # the re-run ran only the tasks that had not finished
        assert len(json.loads((out / "logs" / "filter_1" / "ranks_to_run.json").read_text())) == 3 - done_before
