from __future__ import annotations

import json

import pytest

from slmtrain.config import ConfigError
from slmtrain.eval import scoring
from slmtrain.eval.suites import CORE, CORE_MISSING, evaluate, expand
from slmtrain.eval.tasks import TaskResult
from tests.eval.eval_helpers import FIXTURES


def test_suites_expand_to_their_families_and_olmes_variants():
    assert [r.task for r in expand(["knowledge", "math"])] == ["mmlu", "triviaqa", "nq_open", "gsm8k"]
    assert [r.task for r in expand(["piqa"], olmes=True)] == ["piqa:rc", "piqa:mc"]
    assert len(expand(["commonsense"])) == 11 and len(expand(["icl"])) == 10
    assert len(CORE) + len(CORE_MISSING) == 22
    with pytest.raises(ConfigError, match="unknown task 'nope'.*suites: commonsense, knowledge"):
        expand(["nope"])


def test_core_is_the_mean_centered_accuracy_at_its_shot_counts(model, tokenizer, monkeypatch):
    seen = []

    def fake(model, tokenizer, task, shots=0, limit=None, seed=1234, max_new_tokens=None):
        seen.append((task.name, shots))
        accuracy = 0.6
        return TaskResult(task.name, task.family, shots, 10, {"acc": accuracy, "acc_norm": accuracy},
                          {"acc": 0.1, "acc_norm": 0.1})

    monkeypatch.setattr(scoring, "evaluate_task", fake)
    report = evaluate(model, tokenizer, ["core"], limit=10)
    assert seen == [(name, shots) for name, shots, _ in CORE]
    expected = sum((0.6 - chance) / (1 - chance) for _, _, chance in CORE) / len(CORE)
    assert report.core.score == pytest.approx(expected)
    assert "hellaswag" in report.keys and "hellaswag@10shot" in report.keys
    assert report.to_json()["core"]["missing"] == list(CORE_MISSING)


def test_report_table_json_and_items(model, tokenizer, tmp_path):
    report = evaluate(model, tokenizer, [str(FIXTURES / "arc-mini.jsonl"), str(FIXTURES / "piqa-mini.jsonl")],
                      limit=3)
    assert [row["task"] for row in report.rows()] == ["arc-mini", "piqa-mini"]
    assert all(row["n"] == 3 and 0 <= row["acc"] <= 1 for row in report.rows())
    scores, items = report.write(tmp_path / "out.json")
    written = json.loads(scores.read_text())
    assert set(written) == {"arc-mini", "piqa-mini"} and written["piqa-mini"]["n"] == 3
    assert written["arc-mini"]["acc_stderr"] == pytest.approx(report.results[0].stderr["acc"])
    lines = [json.loads(line) for line in items.read_text().splitlines()]
    assert [(r["task"], r["index"]) for r in lines] == [("arc-mini", i) for i in range(3)] + [
        ("piqa-mini", i) for i in range(3)]


def test_a_task_asked_at_other_shots_beside_core_is_scored_apart(model, tokenizer, monkeypatch):
    def fake(model, tokenizer, task, shots=0, limit=None, seed=1234, max_new_tokens=None):
        accuracy = 0.9 if shots == 5 else 0.6  # a 5-shot score must never stand in for core's 0-shot one
        return TaskResult(task.name, task.family, shots, 10, {"acc": accuracy, "acc_norm": accuracy},
                          {"acc": 0.1, "acc_norm": 0.1})

    monkeypatch.setattr(scoring, "evaluate_task", fake)
    report = evaluate(model, tokenizer, ["copa", "core"], shots=5, limit=10)
    assert report.keys[0] == "copa" and report.results[0].shots == 5
    zero_shot = report.results[report.keys.index("copa@0shot")]
    assert zero_shot.shots == 0 and report.core.centered["copa@0shot"] == pytest.approx((0.6 - 0.5) / 0.5)
