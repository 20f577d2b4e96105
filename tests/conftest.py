"""Token shards of real text (Python's own documentation, read at test time) and a tiny-model recipe."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydoc_data.topics
import pytest

# The suite runs in two processes (pytest -n 2) on two cores: one math thread each, set before torch is imported
# (two processes whose thread pools each want both cores slow each other down ~30x). Subprocesses inherit it.
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from tests.paths import REPO_ROOT
from slmtrain.data.shards import prepare_shards
from slmtrain.train.config import TrainConfig, load_recipe


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    (root / "raw").mkdir()
    with (root / "raw" / "docs.jsonl").open("w") as f:
        for i, text in enumerate(pydoc_data.topics.topics.values()):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    spec = root / "tok.yaml"
    spec.write_text("kind: bpe\nvocab_size: 512\nbyte_fallback: true\nsplit_digits: true\nseed: 0\n")
    prepare_shards(spec, root / "raw", root / "shards", tokenizer_dir=root / "tokenizer", val_fraction=0.05)
    return root / "shards"


def tiny_recipe(shards: Path, run_dir: Path, **overrides) -> TrainConfig:
    """A 2-layer model on the shards, 4 sequences of 64 tokens per step, checkpoints every 4 steps."""
    base = {
        "run_dir": str(run_dir),
        "model": {"preset": "tiny", "vocab_size": 512, "max_seq_len": 64},
        "data": {"shards": str(shards), "build": "none", "seq_len": 64, "val_samples": 8},
        "batch": {"tokens": 512, "micro_batch": 4},
        "optim": {"lr": 1e-2},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "budget": {"policy": "fixed", "tokens": 512 * 16},
        "trainer": {"enable_progress_bar": False, "enable_model_summary": False},
        "log_every_n_steps": 1,
        "val_every_n_steps": 8,
        "ckpt_every_n_steps": 4,
        "samples": 1,
        "sample_tokens": 8,
        "eval": {"tasks": []},  # the demo recipe's in-loop benchmarks: tested on their own (tests/eval/test_in_loop.py)
    }
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            base.setdefault(section, {})[sub] = value
        else:
            base[key] = value
    return load_recipe("demo", base)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """The single-node Slurm cluster of .ci/slurm-up.sh (its SLURM_CONF). Started here and stopped at the end,
    unless it was already running (.ci/run starts it); when the daemons cannot start, their own error fails the test."""
    up = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=600)
    if up.returncode:
        pytest.fail(f"the Slurm cluster did not start (.ci/slurm-up.sh):\n{up.stderr}", pytrace=False)
    conf = up.stdout.splitlines()[0].removeprefix("export SLURM_CONF=")
    os.environ["SLURM_CONF"] = conf  # sbatch exports it to the jobs, whose srun needs it too
    yield conf
    if "# started" in up.stdout:
        subprocess.run(["bash", str(REPO_ROOT / ".ci" / "slurm-down.sh")], check=True, timeout=120)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The cluster tests rely on --dist loadgroup running each group on one worker: under a pytest/pytest-xdist
    pair where the groups are silently ignored (xdist marks them by appending @group to the node id), they fail."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group") \
            and "@" not in item.nodeid:
        pytest.fail(f"pytest-xdist does not group tests under pytest {pytest.__version__}: install the versions "
                    "that pyproject.toml's dev extra pins", pytrace=False)
