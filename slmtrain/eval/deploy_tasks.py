"""Deployment-style tasks: what an on-device assistant is asked to do, as local JSONL files with scorers.

Formats, detected from each file's keys (:func:`slmtrain.eval.tasks.load_jsonl_task`); every file and format goes
through the one task registry and the one scoring path (:func:`slmtrain.eval.scoring.evaluate_task`):

- ``auto-reply`` ``message``/``choices``/``label``: choose the reply, by log-likelihood (``acc``, ``acc_norm``).
- ``auto-reply-generate`` ``message``/``reply``: generate the reply; ``exact_match`` after normalising case,
  whitespace and final punctuation.
- ``triage`` ``app``/``notification``/``labels``/``label``: classify a notification into one of its labels by
  log-likelihood (``acc``).
- ``tap-target`` ``instruction``/``screen``/``target``: the screen is an accessibility tree (nodes with ``id``,
  ``role``, ``text`` and ``children``) serialised one node per line; generate the id of the element to tap;
  ``exact_match`` of the id.
- ``function-call`` ``request``/``tools``/``call``: tools are ``{"name", "description", "parameters"}`` with a JSON
  schema; generate one JSON object ``{"name": ..., "arguments": {...}}``. Scores: ``valid_json``,
  ``schema_valid`` (a known tool and arguments valid under its schema, by ``jsonschema``), ``name_match``,
  ``argument_match`` (share of the reference arguments given with the reference value) and ``exact_call``.

Prompts are fixed templates (below); generation is greedy until a newline. Few-shot examples, when asked for, are
other items of the same file with their answers, as for the benchmark tasks. Small files written for this project
ship in ``slmtrain/eval/data/deploy/``; users' own files in the same formats are taken by path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from slmtrain.eval.tasks import JSONL_FORMATS, Generation, MultipleChoice, Task, load_jsonl_task, register

DEPLOY_DIR = Path(__file__).resolve().parent / "data" / "deploy"
UNTIL_NEWLINE = {"family": "deploy", "until": ("\n",), "max_new_tokens": 64}


# ---------------------------------------------------------------------------------------------------- scorers
def normalise(text: str) -> str:
    """Case, runs of whitespace and final punctuation do not change a reply."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip().lower()


def reply_match(output: str, reply: str) -> dict[str, float]:
    return {"exact_match": float(normalise(output) == normalise(reply))}


def id_match(output: str, target: str) -> dict[str, float]:
    return {"exact_match": float(output.strip() == target)}


def score_function_call(output: str, reference: dict[str, Any]) -> dict[str, float]:
    """JSON validity, schema validity, tool name, share of reference arguments matched, and the whole call."""
    tools, expected_call = reference["tools"], reference["call"]
    try:
        call = json.loads(output.strip())
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict):
        return {"valid_json": float(call is not None), "schema_valid": 0.0, "name_match": 0.0,
                "argument_match": 0.0, "exact_call": 0.0}
    by_name = {tool["name"]: tool for tool in tools}
    arguments = call.get("arguments")
    schema_valid = (call.get("name") in by_name and isinstance(arguments, dict)
                    and jsonschema.Draft202012Validator(by_name[call["name"]]["parameters"]).is_valid(arguments))
    expected = expected_call["arguments"]
    given = arguments if isinstance(arguments, dict) else {}
    matched = sum(key in given and given[key] == value for key, value in expected.items())
    return {"valid_json": 1.0, "schema_valid": float(schema_valid),
            "name_match": float(call.get("name") == expected_call["name"]),
            "argument_match": matched / len(expected) if expected else float(given == {}),
            "exact_call": float(call.get("name") == expected_call["name"] and given == expected)}


# ---------------------------------------------------------------------------------------------------- formats
def _auto_reply(r: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice.shared(f"Message: {r['message']}\nReply:", list(r["choices"]), int(r["label"]))


def _auto_reply_generate(r: dict[str, Any]) -> Generation:
    return Generation(f"Message: {r['message']}\nReply:", f" {r['reply']}", str(r["reply"]))


def _triage(r: dict[str, Any]) -> MultipleChoice:
    labels = list(r["labels"])
    if r["label"] not in labels:
        raise ValueError(f"label {r['label']!r} is not one of {labels}")
    return MultipleChoice.shared(f"App: {r['app']}\nNotification: {r['notification']}\nPriority:", labels,
                                 labels.index(r["label"]))


def serialise_screen(node: dict[str, Any], depth: int = 0) -> list[str]:
    """One line per node, indented by depth: ``[id] role "text"``."""
    text = f' "{node["text"]}"' if node.get("text") else ""
    lines = [f"{'  ' * depth}[{node['id']}] {node['role']}{text}"]
    for child in node.get("children", []):
        lines += serialise_screen(child, depth + 1)
    return lines


def _element_ids(node: dict[str, Any]) -> list[str]:
    return [node["id"], *(i for child in node.get("children", []) for i in _element_ids(child))]


def _tap_target(r: dict[str, Any]) -> Generation:
    if r["target"] not in _element_ids(r["screen"]):
        raise ValueError(f"target {r['target']!r} is not an element id of the screen")
    screen = "\n".join(serialise_screen(r["screen"]))
    return Generation(f"Screen:\n{screen}\nInstruction: {r['instruction']}\nTap element id:", f" {r['target']}",
                      str(r["target"]))


def _function_call(r: dict[str, Any]) -> Generation:
    tools = list(r["tools"])
    names = [tool["name"] for tool in tools]
    for tool in tools:
        try:
            jsonschema.Draft202012Validator.check_schema(tool["parameters"])
        except jsonschema.SchemaError as e:
            raise ValueError(f"tool {tool['name']!r}: invalid parameters schema ({e.message})") from None
    if r["call"]["name"] not in names:
        raise ValueError(f"call names {r['call']['name']!r}, not one of the tools {names}")
    listing = "\n".join(f"- {t['name']}: {t.get('description', '')} parameters {json.dumps(t['parameters'])}"
                        for t in tools)
    call = {"name": r["call"]["name"], "arguments": dict(r["call"]["arguments"])}
    return Generation(f"Tools:\n{listing}\nRequest: {r['request']}\nCall:", f" {json.dumps(call)}",
                      {"tools": tools, "call": call})


JSONL_FORMATS.update({
    "auto-reply": (("message", "choices", "label"), _auto_reply, {"family": "deploy", "metrics": ("acc", "acc_norm")}),
    "auto-reply-generate": (("message", "reply"), _auto_reply_generate, {"scorer": reply_match, **UNTIL_NEWLINE}),
    "triage": (("app", "notification", "labels", "label"), _triage, {"family": "deploy", "metrics": ("acc",)}),
    "tap-target": (("instruction", "screen", "target"), _tap_target, {"scorer": id_match, **UNTIL_NEWLINE}),
    "function-call": (("request", "tools", "call"), _function_call, {"scorer": score_function_call, **UNTIL_NEWLINE}),
})

for _path in sorted(DEPLOY_DIR.glob("*.jsonl")):
    register(_path.stem, "deploy", f"deployment task file {_path.name}")(lambda p=_path: load_jsonl_task(p))
