"""The Ray executor: the stages one after the other on a Ray cluster, one started for the run or one joined at
``cluster.address``. A cluster on this machine is kept on the loopback (Ray would otherwise listen on every
interface), which takes setting Ray's private single-machine constant; see ``_ray_on_loopback``."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmtrain.config import ConfigError, UserError
from slmtrain.data.curate.config import Stage
from slmtrain.data.curate.executors.common import check_stage_complete, split_options

# Ray binds its servers to every interface unless the node's address is 127.0.0.1, and on Linux it replaces a given
# 127.0.0.1 by the machine's external address. Its single-machine mode (the default on macOS and Windows) keeps
# 127.0.0.1: this variable set to 0 selects it, read by `import ray` and by every process the cluster starts.
RAY_MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CLUSTER_CONNECT_SECONDS = 5


def run_on_ray(stages: list[Stage], output: Path, workers: int, options: dict[str, Any]) -> None:
    """Run the stages one after the other on a Ray cluster: a local one started here (``ray.init`` options such as
    ``cluster.num_cpus``) and stopped at the end, or the running cluster at ``cluster.address``. The other
    ``cluster.*`` keys go to datatrove's RayPipelineExecutor (``cpus_per_task``, ``mem_per_cpu_gb``, ...). A task
    whose worker dies is resubmitted (up to 3 times); one that still fails stops the run, and the next run resumes
    it. A cluster on this machine (started here, or joined at a loopback address) listens on 127.0.0.1 only."""
    with _ray_on_loopback(_is_loopback(options.get("address"))):
        import ray
        from datatrove.executor import RayPipelineExecutor

        split = split_options(options, {"ray.init": ray.init, "RayPipelineExecutor": RayPipelineExecutor})
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage reports
        # the hook is a dotted path each worker imports: this module's own name keeps it right wherever it lives
        runtime_env = {"worker_process_setup_hook": f"{__name__}.{ray_worker_setup.__name__}",
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
                check_stage_complete(stage, output)
        finally:
            ray.shutdown()


def ray_worker_setup() -> None:
    """Run in every Ray worker of a curation run: datatrove runs each task in a process pool, and a process forked
    from a Ray worker (many threads) can deadlock on a lock held at fork time; forkserver children start clean."""
    import multiprocess

    multiprocess.set_start_method("forkserver", force=True)


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
