"""What the executors share: the driver's datatrove logging sent to ``OUTPUT/curate.log``, ``cluster.*`` options
routed to the callables they configure, and the check that a stage's tasks all finished before the next stage (or
the stats) relies on them."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datatrove.utils.logging import logger, setup_default_logger

from slmtrain.config import ConfigError, UserError
from slmtrain.data.curate.config import Stage


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


def split_options(options: dict[str, Any], targets: dict[str, Callable]) -> dict[str, dict[str, Any]]:
    """``cluster.*`` keys, each to the function or class whose parameter it names; an unknown key is an error."""
    split: dict[str, dict[str, Any]] = {name: {} for name in targets}
    # what the executors set themselves from the stage and the run
    set_here = {"self", "kwargs", "pipeline", "tasks", "workers", "logging_dir", "depends", "job_name"}
    valid = {name: set(inspect.signature(target).parameters) - set_here for name, target in targets.items()}
    for key, value in options.items():
        owner = next((name for name in targets if key in valid[name]), None)
        if owner is None:
            raise ConfigError(f"cluster.{key}", "unknown key; valid keys: " + "; ".join(
                f"{name}: {', '.join(sorted(keys))}" for name, keys in valid.items()))
        split[owner][key] = value
    return split


def check_stage_complete(stage: Stage, output: Path) -> None:
    """Raise UserError unless every task of ``stage`` left its completion marker (a re-run runs only the others)."""
    completions = output / "logs" / stage.name / "completions"
    missing = [rank for rank in range(stage.tasks) if not (completions / f"{rank:05d}").is_file()]
    if missing:
        raise UserError(f"stage {stage.name}: {len(missing)} of {stage.tasks} tasks did not finish (logs: "
                        f"{output / 'logs' / stage.name}); re-run the same command to run only those")
