"""Run a function once per argument, each call in a fresh process: what the leaderboard and co-design measure with.

A process's peak resident set size never goes down, so a model's peak memory is only its own in a process that has
held nothing else. Starting Python and importing torch for every measurement would cost seconds, so the processes
are forked from a forkserver that has imported torch and the function's module once; each child serves one call
(``max_tasks_per_child=1``) and exits.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_fresh_processes(function: Callable[[T], R], arguments: Iterable[T],
                       preload: Sequence[str] = ()) -> Iterator[R]:
    """``function(argument)`` for each argument in turn, each in a new child process, yielded as it finishes.

    ``function`` must be importable (a module-level function) and its arguments and results picklable; its module
    and ``preload`` (module names) are imported once by the forkserver. Arguments are read lazily, so a caller that
    stops iterating (a time budget) starts no further process. An exception in a child is re-raised here."""
    context = multiprocessing.get_context("forkserver")
    # slmtrain first: its import quiets torchao's loader noise before anything imports torchao
    context.set_forkserver_preload(list(dict.fromkeys(["slmtrain", "torch", *preload, function.__module__])))
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for argument in arguments:
            yield pool.submit(function, argument).result()
