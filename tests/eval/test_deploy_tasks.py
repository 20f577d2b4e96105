from __future__ import annotations

import json

import pytest

from slmtrain.config import UserError
from slmtrain.eval.deploy_tasks import id_match, normalise, reply_match, score_function_call, serialise_screen
from slmtrain.eval.scoring import evaluate_task
from slmtrain.eval.tasks import MultipleChoice, load_task, task_names
from tests.eval.eval_helpers import FIXTURES

TOOLS = [{"name": "set_volume", "parameters": {"type": "object", "properties": {
    "percent": {"type": "integer", "minimum": 0, "maximum": 100}, "mute": {"type": "boolean"}},
    "required": ["percent"]}}]
CALL = {"tools": TOOLS, "call": {"name": "set_volume", "arguments": {"percent": 20, "mute": False}}}


@pytest.mark.parametrize("output,expected", [
    ('{"name": "set_volume", "arguments": {"percent": 20, "mute": false}}',
     {"valid_json": 1, "schema_valid": 1, "name_match": 1, "argument_match": 1, "exact_call": 1}),
    ('{"name": "set_volume", "arguments": {"percent": 20}}',  # valid, one of two arguments right
     {"valid_json": 1, "schema_valid": 1, "name_match": 1, "argument_match": 0.5, "exact_call": 0}),
    ('{"name": "set_volume", "arguments": {"percent": 150, "mute": false}}',  # above the schema's maximum
     {"valid_json": 1, "schema_valid": 0, "name_match": 1, "argument_match": 0.5, "exact_call": 0}),
    ('{"name": "get_weather", "arguments": {"percent": 20, "mute": false}}',  # no such tool
     {"valid_json": 1, "schema_valid": 0, "name_match": 0, "argument_match": 1, "exact_call": 0}),
    ('{"name": "set_volume", "arguments": {"percent": 20', {"valid_json": 0, "schema_valid": 0, "name_match": 0,
                                                             "argument_match": 0, "exact_call": 0}),
    ("[1, 2]", {"valid_json": 1, "schema_valid": 0, "name_match": 0, "argument_match": 0, "exact_call": 0}),
])
def test_function_call_scorer_matches_hand_computed_cases(output, expected):
    assert score_function_call(output, CALL) == expected


def test_reply_and_element_id_scorers():
    reply = "Sure, calling you now."
    assert reply_match("  sure,   CALLING you now!", reply) == {"exact_match": 1.0}
    assert reply_match("Sure, calling you later.", reply) == {"exact_match": 0.0}
    assert normalise(" Good  night! ") == "good night"
    assert id_match(" btn_send", "btn_send") == {"exact_match": 1.0}
    assert id_match("BTN_SEND", "btn_send") == {"exact_match": 0.0}  # ids are exact


def test_screen_serialises_one_indented_node_per_line():
    screen = {"id": "root", "role": "window", "children": [
        {"id": "bar", "role": "toolbar", "children": [{"id": "btn_back", "role": "button", "text": "Back"}]}]}
    assert serialise_screen(screen) == ["[root] window", "  [bar] toolbar", '    [btn_back] button "Back"']


def test_shipped_files_load_through_the_one_registry():
    deploy = [name for name in task_names() if name.endswith("-mini")]
    kinds = {name: (load_task(name).family, load_task(name).is_generation) for name in deploy}
    assert kinds == {"auto-reply-generate-mini": ("deploy", True), "auto-reply-mini": ("deploy", False),
                     "function-call-mini": ("deploy", True), "tap-target-mini": ("deploy", True),
                     "triage-mini": ("deploy", False)}
    assert len(load_task(FIXTURES / "arc-mini.jsonl").items) == 5  # benchmark formats come through the same door


def test_users_files_are_accepted_and_bad_lines_are_one_error(tmp_path):
    own = tmp_path / "my_triage.jsonl"
    own.write_text(json.dumps({"app": "Mail", "notification": "Invoice overdue", "labels": ["urgent", "later"],
                               "label": "urgent"}) + "\n")
    assert load_task(own).items[0] == MultipleChoice.shared("App: Mail\nNotification: Invoice overdue\nPriority:",
                                                            ["urgent", "later"], 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Tap send", "screen": {"id": "root", "role": "window"},
                               "target": "btn_send"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*not an element id"):
        load_task(bad)


def test_generation_tasks_score_every_item(model, tokenizer):
    result = evaluate_task(model, tokenizer, load_task("function-call-mini"), limit=2, max_new_tokens=4)
    assert result.n == 2 and set(result.scores) == {"valid_json", "schema_valid", "name_match",
                                                    "argument_match", "exact_call"}
    assert all(len(values) == 2 for values in result.scores.values())
    choice = evaluate_task(model, tokenizer, load_task("triage-mini"), limit=3)
    assert choice.family == "deploy" and list(choice.metrics) == ["acc"] and len(choice.scores["acc"]) == 3
