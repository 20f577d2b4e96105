from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pydoc_data.topics
import pytest

from slmtrain.model.formats.gguf import read_gguf

from tests.eval.eval_helpers import FIXTURES
from tests.output import diagnostics
from tests.paths import REPO_ROOT

REPO = REPO_ROOT


def launch(name: str):
    """A command's ``run(argv) -> exit code``, called in-process (user errors raise instead of exiting)."""
    return importlib.import_module(f"slmtrain.cli.{name}").run


def test_eval_on_an_hf_directory_runs_tasks_and_perplexity(hf_dir, tmp_path, capsys):
    text = tmp_path / "held_out.txt"
    text.write_text(pydoc_data.topics.topics["if"][:120])
    results = tmp_path / "results.csv"
    main = launch("eval")
    piqa, gsm8k, arc = (FIXTURES / f"{name}-mini.jsonl" for name in ("piqa", "gsm8k", "arc"))
    assert main([f"model={hf_dir}", f"tasks={piqa},{gsm8k}", "limit=2", f"text={text}",
                 "quant=int8", f"csv={results}"]) == 0
    scores = tmp_path / "scores.json"
    assert main([f"model={hf_dir}", f"tasks={arc}", "shots=1", "limit=1", f"csv={results}", f"json={scores}"]) == 0
    out = capsys.readouterr().out
    assert "task piqa-mini" in out and "exact_match" in out and "bits_per_byte" in out
    rows = list(csv.DictReader(results.open()))
    assert [r["eval"] for r in rows] == ["perplexity text (1 docs)", "perplexity text (1 docs)", "task piqa-mini",
                                         "task gsm8k-mini", "task arc-mini"]
    assert rows[-1]["shots"] == "1" and rows[-1]["n"] == "1" and rows[0]["acc"] == ""
    written = json.loads(scores.read_text())
    assert set(written["arc-mini"]) >= {"acc", "acc_norm", "bpb", "acc_stderr", "n"}
    [record] = [json.loads(line) for line in scores.with_suffix(".items.jsonl").open()]
    assert record["task"] == "arc-mini" and record["index"] == 0 and len(record["loglikelihoods"]) == 4


def test_bench_device_prints_one_json_object(capsys):
    main = launch("bench_device")
    assert main(["model=tiny", "prompt=32", "gen=8", "repeats=1", "warmup=0", "format=json",
                 "hardware=jetson-orin-nano-8gb"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes",
                "predicted_decode_tokens_per_s"):
        assert result[key] > 0, key


def test_export_gguf_from_a_preset(tmp_path, capsys):
    assert launch("export_gguf")(["model=tiny", f"out={tmp_path / 'tiny.gguf'}", "quant=q8_0"]) == 0
    assert "Q8_0" in capsys.readouterr().out
    assert read_gguf(tmp_path / "tiny.gguf")["blk.1.ffn_down.weight"][0] == (64, 128)


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "launch" / "export_gguf.py"), "model=tiny",
                          f"out={tmp_path / 'x.gguf'}", "quant=q3"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and diagnostics(run.stderr).strip().count("\n") == 0 and "q4_0" in diagnostics(run.stderr)


@pytest.mark.parametrize(("script", "args", "error"), [
    ("eval", ["model=tiny", "shards=x", "max_tokens=-1"], "error: max_tokens: must be >= 1 (or left out), got -1"),
    ("eval", ["model=tiny", "shards=x", "window=0"], "error: window: must be >= 1 (or left out), got 0"),
    ("bench_device", ["model=tiny", "threads=-2"], "error: threads: must be >= 1, got -2"),
    ("bench_device", ["model=tiny", "prompt=8", "gen=8", "depths=0,100000"],  # before the main benchmark runs
     "error: depth 100000 + gen 16 exceeds max_seq_len=128"),
    ("route", ["demo", "max_digits=0"], "error: max_digits: must be >= 1, got 0"),
    ("export_hf", ["model=tiny", "out="], "error: out: expected a path, got nothing"),
    ("eval", ["model=tiny", "tasks=hellaswag,nosuch"],
     "error: tasks: unknown task 'nosuch'; valid choices: arc_challenge, arc_challenge:mc, "),
    ("leaderboard", ["models=tiny", "out=board", "text=/nonexistent.txt"], "error: text: /nonexistent.txt not found"),
])
def test_values_out_of_range_are_refused_before_any_work(script, args, error, tmp_path):
    """Each was a traceback, a silently ignored value or an output written to ./None."""
    run = subprocess.run([sys.executable, str(REPO / "launch" / f"{script}.py"), *args], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    message = diagnostics(run.stderr)
    assert run.returncode == 2 and message.startswith(error) and message.count("\n") == 1, message
    assert not any(tmp_path.iterdir())
