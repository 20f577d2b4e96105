"""The local executor: each stage in a process pool on this machine, its tasks' console logging kept off the
terminal (it goes to ``OUTPUT/curate.log``), which shows one progress line per stage."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.logging import setup_default_logger

from slmtrain.data.curate.config import Stage


def run_local(stages: list[Stage], output: Path, workers: int, console_log: Path | None) -> None:
    """Run the stages one after the other, at most ``workers`` tasks at a time, each after its preparations."""
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
