from __future__ import annotations

import json

import pytest

from slmtrain.config import UserError
from slmtrain.eval.deploy_tasks import (FunctionCall, Reply, deploy_task_names, evaluate_any_task, load_any_task,
                                        normalise, score_function_call, score_reply, serialise_screen)

TOOLS = [{"name": "set_volume", "parameters": {"type": "object", "properties": {
    "percent": {"type": "integer", "minimum": 0, "maximum": 100}, "mute": {"type": "boolean"}},
    "required": ["percent"]}}]
CALL = FunctionCall("Call:", TOOLS, {"name": "set_volume", "arguments": {"percent": 20, "mute": False}})


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
    assert score_function_call(CALL, output) == expected


def test_reply_and_element_id_scorers():
    reply = Reply("Message: hi\nReply:", "Sure, calling you now.")
    assert score_reply(reply, "  sure,   CALLING you now!", by_id=False) == {"exact_match": 1.0}
    assert score_reply(reply, "Sure, calling you later.", by_id=False) == {"exact_match": 0.0}
    assert normalise(" Good  night! ") == "good night"
    target = Reply("Tap element id:", "btn_send")
    assert score_reply(target, " btn_send", by_id=True) == {"exact_match": 1.0}
    assert score_reply(target, "BTN_SEND", by_id=True) == {"exact_match": 0.0}  # ids are exact


def test_screen_serialises_one_indented_node_per_line():
    screen = {"id": "root", "role": "window", "children": [
        {"id": "bar", "role": "toolbar", "children": [{"id": "btn_back", "role": "button", "text": "Back"}]}]}
    assert serialise_screen(screen) == ["[root] window", "  [bar] toolbar", '    [btn_back] button "Back"']


def test_shipped_files_load_in_their_formats():
    formats = {name: load_any_task(name).format for name in deploy_task_names()}
    assert formats == {"auto-reply-generate-mini": "auto-reply-generate", "auto-reply-mini": "auto-reply",
                       "function-call-mini": "function-call", "tap-target-mini": "tap-target",
                       "triage-mini": "triage"}
    assert load_any_task("arc-mini").format == "arc"  # the benchmark tasks come through the same door


def test_users_files_are_accepted_and_bad_lines_are_one_error(tmp_path):
    own = tmp_path / "my_triage.jsonl"
    own.write_text(json.dumps({"app": "Mail", "notification": "Invoice overdue", "labels": ["urgent", "later"],
                               "label": "urgent"}) + "\n")
    assert load_any_task(own).items[0].choices == ["urgent", "later"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Tap send", "screen": {"id": "root", "role": "window"},
                               "target": "btn_send"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*not an element id"):
        load_any_task(bad)


def test_generation_tasks_score_every_item(model, tokenizer):
    result = evaluate_any_task(model, tokenizer, load_any_task("function-call-mini"), limit=2, max_new_tokens=4)
    assert result.items == 2 and set(result.scores) == {"valid_json", "schema_valid", "name_match",
                                                        "argument_match", "exact_call"}
    assert all(len(values) == 2 for values in result.scores.values())
    choice = evaluate_any_task(model, tokenizer, load_any_task("triage-mini"), limit=3)
    assert choice.format == "triage" and len(choice.scores["acc"]) == 3
