"""A non-editable install runs from an empty directory: built-in recipes, pipelines and tokenizer specs are package
data, and nothing is written into the package or the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydoc_data.topics

from tests.paths import REPO_ROOT


def test_installed_package_curates_tokenizes_and_trains_from_an_empty_directory(tmp_path: Path) -> None:
    site, source = tmp_path / "site", tmp_path / "source"
    # A copy of the sources (links kept): setuptools builds in the source tree, and the checkout must stay clean.
    shutil.copytree(REPO_ROOT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert (site / "slmtrain" / "declarations" / "recipes" / "demo.yaml").is_file()
    work = tmp_path / "empty"
    work.mkdir()
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": str(i), "text": text}) + "\n"
                           for i, text in enumerate(pydoc_data.topics.topics.values())))
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def slmtrain(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "slmtrain", *args], capture_output=True, text=True, cwd=work,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    where = subprocess.run([sys.executable, "-c", "import slmtrain; print(slmtrain.__file__)"], capture_output=True,
                           text=True, cwd=work, env=env).stdout
    assert where.startswith(str(site)), where
    assert "recipe" in slmtrain("train", "--help")
    slmtrain("tokenize", "tokenizer=demo", f"input={raw}", "output=shards")
    slmtrain("train", "recipe=demo", "data.shards=shards", "trainer.max_steps=2",
             "samples=0", "run_dir=runs/demo")
    assert (work / "runs" / "demo" / "tokenizer" / "special_tokens.json").is_file()
    assert not any((site / "slmtrain").rglob("tokenizer.model"))  # nothing written into the package
