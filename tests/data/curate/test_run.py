"""run_pipeline and the command line: resuming only the same run, the terminal's progress, one-line errors, the
demo pipeline end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmtrain.config import UserError
from slmtrain.data.curate import run_pipeline
from tests.data.curate.corpus import PROSE, SMALL_PIPELINE
from tests.output import diagnostics
from tests.paths import REPO_ROOT


def test_cli_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "launch/curate.py", "filter=nope", f"output={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert diagnostics(result.stderr).strip().count("\n") == 0 and "unknown filter 'nope'" in diagnostics(result.stderr)
    result = subprocess.run([sys.executable, "launch/train_quality.py", "kind=embedding", f"out={tmp_path}/h.npz"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs annotations=" in diagnostics(result.stderr)



@pytest.mark.slow
def test_demo_pipeline_on_a_small_demo_source(tmp_path: Path) -> None:
    from slmtrain.data.demo import write_demo_documents

    source = write_demo_documents(tmp_path / "src", max_docs=600)
    stats = run_pipeline("demo", source, tmp_path / "out", workers=2)
    assert [row.step for row in stats.steps] == [
        "read", "language", "gopher_quality", "fineweb_quality", "minhash", "fasttext"]
    assert all(stats.step(name).removed > 0 for name in ("gopher_quality", "fasttext"))
    assert stats.totals.balanced and stats.totals.kept > 100
    training = json.loads((tmp_path / "out" / "fasttext_training.json").read_text())
    assert training["train_examples"] > 50



def test_rerun_with_other_settings_into_the_same_output_is_refused(corpus: Path, tmp_path: Path) -> None:
    declaration = tmp_path / "small.yaml"
    declaration.write_text(SMALL_PIPELINE)
    out = tmp_path / "out"
    for i in range(4):  # 6 input files: 4 tasks with workers=1, 6 with workers=2
        (corpus / f"more{i}.jsonl").write_text(json.dumps({"text": PROSE[i], "id": f"more{i}"}) + "\n")
    first = run_pipeline(str(declaration), corpus, out, workers=1)
    assert run_pipeline(str(declaration), corpus, out, workers=1).totals == first.totals  # resumes
    with pytest.raises(UserError, match="different tasks"):
        run_pipeline(str(declaration), corpus, out, workers=2)
    with pytest.raises(UserError, match="different config"):
        run_pipeline(str(declaration), corpus, out, workers=1, overrides={"steps": {"gopher_quality": {"enabled": False}}})



def test_terminal_shows_progress_and_results_and_the_log_file_the_rest(corpus: Path, tmp_path: Path) -> None:
    declaration = tmp_path / "lid.yaml"
    declaration.write_text("steps:\n  language: {languages: [en], language_threshold: 0.3}\n")

    def curate(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "launch/curate.py", f"filter={declaration}", f"input={corpus}",
                               f"output={tmp_path / out}", "workers=1", *extra], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)

    quiet = curate("quiet")
    assert quiet.returncode == 0 and diagnostics(quiet.stderr) == ""
    assert quiet.stdout.startswith("[1/1] filter_1: 2 tasks ...\n[1/1] filter_1: done in ")
    assert "language " in quiet.stdout and "language_score_below_threshold" in quiet.stdout  # the table
    assert "Launching pipeline for rank=1" in (tmp_path / "quiet" / "curate.log").read_text()
    verbose = curate("verbose", "verbose=true")
    assert verbose.returncode == 0 and "Launching pipeline for rank=1" in verbose.stderr
