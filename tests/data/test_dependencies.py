"""Every step of every declared pipeline runs on the dependencies pyproject.toml declares (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
from packaging.utils import canonicalize_name
from pydoc_data.topics import topics

from tests.paths import REPO_ROOT
from slmtrain.data.filters.fasttext_quality import train_fasttext_classifier

PIPELINES = ("fineweb", "fineweb_fast", "dclm", "fineweb_edu", "demo")
OPTIONAL_IMPORTS = {"attrs": "omegaconf's `try: import attr`"}  # imported when installed, never needed
# Builds and checks every step (pre-flight: library, model, probe document), runs each extractor's extraction here
# too (the check runs it in a sandbox worker), and prints the distributions of every module imported.
FRESH_INTERPRETER_CHECK = """
import importlib.metadata, json, sys
from pathlib import Path
from slmtrain.data.filters.extractors import PROBE_PAGE, SandboxedExtractor
from slmtrain.data.curate.config import load_pipeline_config
from slmtrain.data.curate.stages import build_stages
work, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
for name in sys.argv[3:]:
    for stage in build_stages(load_pipeline_config(name, overrides.get(name)), str(work / "html"), work / name, 1):
        for check in stage.checks:
            check()
        for step in stage.pipeline:
            if isinstance(step, SandboxedExtractor):
                assert step.extract(PROBE_PAGE).strip()
providers = importlib.metadata.packages_distributions()
print(json.dumps(sorted({dist for module in list(sys.modules) for dist in providers.get(module.split(".")[0], [])})))
"""


def declared_closure(follow_extras: bool) -> set[str]:
    """Distributions pyproject.toml brings in: its dependencies and, through installed metadata, theirs; with
    ``follow_extras``, also those that requirements like ``lxml[html_clean]`` ask for through an extra."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    pending = [(requirement, "") for requirement in
               tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    closure: set[tuple[str, str]] = set()  # (distribution, the extra asked of it; "" for its plain requirements)
    while pending:
        text, parent_extra = pending.pop()
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        for extra in ["", *(sorted(map(canonicalize_name, requirement.extras)) if follow_extras else [])]:
            if (name, extra) in closure:
                continue
            closure.add((name, extra))
            try:
                pending += [(r, extra) for r in importlib.metadata.requires(requirement.name) or []]
            except importlib.metadata.PackageNotFoundError:
                pass  # declared but not installed here: the test reports what the steps really import
    return {name for name, _ in closure}


def test_every_declared_pipeline_step_runs_on_declared_dependencies_in_a_fresh_interpreter(tmp_path: Path) -> None:
    prose = [text for text in topics.values() if len(text) > 2_000]
    stubs = sorted({getattr(str, name).__doc__.strip().splitlines()[0] for name in dir(str) if not name.startswith("_")})
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "a.html").write_text(f"<html><body><p>{prose[0]}</p></body></html>")
    for label, texts in (("good", prose), ("bad", stubs)):
        (tmp_path / f"{label}.jsonl").write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    train_fasttext_classifier([tmp_path / "good.jsonl"], [tmp_path / "bad.jsonl"], tmp_path / "ft.bin", dim=16,
                              bucket=20_000)
    with open(tmp_path / "head.npz", "wb") as f:  # an untrained head: loading and scoring is what is checked
        np.savez(f, weights=np.zeros(384), bias=np.array(3.0))
    overrides = {"dclm": {"steps": {"fasttext": {"model": str(tmp_path / "ft.bin")}}},
                 "fineweb_edu": {"steps": {"edu": {"head": str(tmp_path / "head.npz")}}}}
    result = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER_CHECK, str(tmp_path), json.dumps(overrides),
                             *PIPELINES], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2_000:]
    imported = {canonicalize_name(dist) for dist in json.loads(result.stdout.splitlines()[-1])}
    assert {"trafilatura", "resiliparse", "lxml-html-clean", "fasttext-numpy2-wheel", "sentence-transformers",
            "spacy"} <= imported
    # A distribution the steps import that only an extra brings in must be declared: resolvers do not always honour
    # extras (the lxml wheel of issue 17 "does not provide the extra 'html_clean'" that jusText asks for). Imports
    # outside both closures are optional ones (transformers tries accelerate, peft, ... when installed).
    only_through_extras = declared_closure(follow_extras=True) - declared_closure(follow_extras=False)
    assert imported & only_through_extras - OPTIONAL_IMPORTS.keys() == set()
