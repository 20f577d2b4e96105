from __future__ import annotations

import csv

import pytest

from slmtrain.config import ConfigError, build
from slmtrain.eval.leaderboard import LeaderboardOptions, bootstrap_interval, leaderboard, mean_of, write_leaderboard


def test_two_tiny_models_at_two_precisions_write_every_file(hf_dir, tmp_path):
    options = build(LeaderboardOptions, {
        "models": [str(hf_dir), "tiny"], "quant": ["none", "int8"], "out": tmp_path / "board",
        "tasks": ["arc_easy", "triage-mini", "tap-target-mini", "function-call-mini"], "limit": 2,
        "max_new_tokens": 6,
        "context": 64, "prompt": 16, "gen": 4, "repeats": 1, "bootstrap": 200, "dtype": "fp32"})
    rows = leaderboard(options)
    paths = write_leaderboard(rows, options.out)
    assert [p.name for p in paths] == ["leaderboard.csv", "leaderboard.md", "pareto_latency.png",
                                       "pareto_memory.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    table = list(csv.DictReader(paths[0].open()))
    assert [(r["model"], r["quant"]) for r in table] == [(str(hf_dir), "none"), (str(hf_dir), "int8"),
                                                         ("tiny", "none"), ("tiny", "int8")]
    scored, quantized = rows[0], rows[1]
    assert scored["capability"] == "scored" and rows[2]["capability"] == "n/a (random weights)"
    assert "bits_per_byte" not in rows[2] and rows[2]["decode_tokens_per_s"] > 0
    assert scored["bits_per_byte_low"] <= scored["bits_per_byte"] <= scored["bits_per_byte_high"]
    assert quantized["weight_bytes"] < scored["weight_bytes"]
    assert quantized["bits_per_byte"] != scored["bits_per_byte"]  # the int8 weights were scored, not the float ones
    assert quantized["bits_per_byte"] == pytest.approx(scored["bits_per_byte"], rel=0.05)
    for key in ("arc_easy.acc", "triage-mini.acc", "tap-target-mini.exact_match", "function-call-mini.valid_json"):
        assert scored[key] == pytest.approx(score_by_hand(hf_dir, key, options)), key
        assert scored[f"{key}_low"] <= scored[key] <= scored[f"{key}_high"], key
    markdown = paths[1].read_text()
    assert "bits/byte [95% CI]" in markdown and "n/a" in markdown and markdown.count("\n| ") == 4


def score_by_hand(hf_dir, key: str, options: LeaderboardOptions) -> float:
    """A task's headline score recomputed from its per-item records, here, in this process: accuracy as the share
    of items whose gold choice has the highest log-likelihood; a generation metric as the mean of the items'."""
    import torch

    from slmtrain.artifacts import load_model
    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    task, metric = key.split(".", 1)
    loaded = load_model(hf_dir, torch.float32)
    result = evaluate_task(loaded.model, loaded.tokenizer, load_task(task), options.shots, options.limit,
                           max_new_tokens=options.max_new_tokens)
    if metric == "acc" and "loglikelihoods" in result.records[0]:
        values = [float(max(range(len(r["loglikelihoods"])), key=r["loglikelihoods"].__getitem__) == r["label"])
                  for r in result.records]
    else:
        values = [float(r["scores"][metric]) for r in result.records]
    assert len(values) == options.limit
    return sum(values) / len(values)


def test_bootstrap_interval_brackets_the_mean_and_collapses_on_constant_scores():
    low, high = bootstrap_interval(([0, 1] * 20,), mean_of, 500, seed=0)
    assert 0.3 < low < 0.5 < high < 0.7
    assert bootstrap_interval(([1.0, 1.0, 1.0],), mean_of, 100, seed=0) == (1.0, 1.0)
    assert bootstrap_interval(([1.0],), mean_of, 100, seed=0) == (None, None)


def test_a_context_budget_below_the_bench_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="context"):
        build(LeaderboardOptions, {"models": ["tiny"], "out": tmp_path, "context": 64, "prompt": 64, "gen": 8})
