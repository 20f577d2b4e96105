"""Deployment-style tasks: what an on-device assistant is asked to do, as local JSONL files with scorers.

Formats, detected from each file's keys like the benchmark formats of :mod:`slmtrain.eval.tasks`:

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from slmtrain.config import ConfigError, UserError
from slmtrain.eval import TextTokenizer
from slmtrain.eval.tasks import (DATA_DIR, MultipleChoice, Task, TaskResult, evaluate_task, fewshot_prefix,
                                 greedy_until, load_task, task_names)
from slmtrain.model.transformer import Transformer

DEPLOY_DIR = DATA_DIR / "deploy"


@dataclass
class Reply:
    """A generated answer compared by exact match (after ``normalise``)."""

    prompt: str
    answer: str

    def solved(self) -> str:
        return f"{self.prompt} {self.answer}"


@dataclass
class FunctionCall:
    prompt: str
    tools: list[dict[str, Any]]
    call: dict[str, Any]  # {"name": ..., "arguments": {...}}

    def solved(self) -> str:
        return f"{self.prompt} {json.dumps(self.call)}"


# ---------------------------------------------------------------------------------------------------- formats
def _auto_reply(r: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice(f"Message: {r['message']}\nReply:", list(r["choices"]), int(r["label"]))


def _auto_reply_generate(r: dict[str, Any]) -> Reply:
    return Reply(f"Message: {r['message']}\nReply:", str(r["reply"]))


def _triage(r: dict[str, Any]) -> MultipleChoice:
    labels = list(r["labels"])
    if r["label"] not in labels:
        raise ValueError(f"label {r['label']!r} is not one of {labels}")
    return MultipleChoice(f"App: {r['app']}\nNotification: {r['notification']}\nPriority:", labels,
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


def _tap_target(r: dict[str, Any]) -> Reply:
    if r["target"] not in _element_ids(r["screen"]):
        raise ValueError(f"target {r['target']!r} is not an element id of the screen")
    screen = "\n".join(serialise_screen(r["screen"]))
    return Reply(f"Screen:\n{screen}\nInstruction: {r['instruction']}\nTap element id:", str(r["target"]))


def _function_call(r: dict[str, Any]) -> FunctionCall:
    tools = list(r["tools"])
    names = [tool["name"] for tool in tools]
    for tool in tools:
        jsonschema.Draft202012Validator.check_schema(tool["parameters"])
    if r["call"]["name"] not in names:
        raise ValueError(f"call names {r['call']['name']!r}, not one of the tools {names}")
    listing = "\n".join(f"- {t['name']}: {t.get('description', '')} parameters {json.dumps(t['parameters'])}"
                        for t in tools)
    return FunctionCall(f"Tools:\n{listing}\nRequest: {r['request']}\nCall:", tools,
                        {"name": r["call"]["name"], "arguments": dict(r["call"]["arguments"])})


DEPLOY_FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Any]]] = {
    "auto-reply": (("message", "choices", "label"), _auto_reply),
    "auto-reply-generate": (("message", "reply"), _auto_reply_generate),
    "triage": (("app", "notification", "labels", "label"), _triage),
    "tap-target": (("instruction", "screen", "target"), _tap_target),
    "function-call": (("request", "tools", "call"), _function_call),
}
CHOICE_FORMATS = ("auto-reply", "triage")


def deploy_task_names() -> list[str]:
    return task_names(DEPLOY_DIR)


def load_any_task(name_or_path: str | Path) -> Task:
    """A benchmark task (:func:`slmtrain.eval.tasks.load_task`) or a deployment task, by name or JSONL path; the
    file's first record decides the format, and a line that does not fit it is an error naming the line."""
    path = Path(name_or_path)
    if not path.is_file():
        path = DEPLOY_DIR / f"{name_or_path}.jsonl"
        if not path.is_file():
            if str(name_or_path) in task_names(DATA_DIR):
                return load_task(name_or_path)
            raise ConfigError("tasks", f"unknown task {str(name_or_path)!r}; valid choices: "
                                       f"{', '.join(task_names(DATA_DIR) + deploy_task_names())} (or a .jsonl path)")
    items: list[Any] = []
    fmt = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if fmt is None:
                fmt = _detect(record)
                if fmt is None:
                    return load_task(path)  # a benchmark format, or its one-line error listing them
            items.append(DEPLOY_FORMATS[fmt][1](record))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError,
                jsonschema.SchemaError) as e:
            raise UserError(f"{path}:{number}: not a valid {fmt or 'task'} record ({type(e).__name__}: "
                            f"{str(e).splitlines()[0]})") from None
    if fmt is None:
        raise UserError(f"{path}: no items")
    return Task(path.stem, fmt, items)


def _detect(record: Any) -> str | None:
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    return next((name for name, (keys, _) in DEPLOY_FORMATS.items() if all(k in record for k in keys)), None)


# ---------------------------------------------------------------------------------------------------- scorers
def normalise(text: str) -> str:
    """Case, runs of whitespace and final punctuation do not change a reply."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip().lower()


def score_reply(item: Reply, output: str, by_id: bool) -> dict[str, float]:
    if by_id:
        return {"exact_match": float(output.strip() == item.answer)}
    return {"exact_match": float(normalise(output) == normalise(item.answer))}


def score_function_call(item: FunctionCall, output: str) -> dict[str, float]:
    """JSON validity, schema validity, tool name, share of reference arguments matched, and the whole call."""
    try:
        call = json.loads(output.strip())
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict):
        return {"valid_json": float(call is not None), "schema_valid": 0.0, "name_match": 0.0,
                "argument_match": 0.0, "exact_call": 0.0}
    tools = {tool["name"]: tool for tool in item.tools}
    arguments = call.get("arguments")
    schema_valid = (call.get("name") in tools and isinstance(arguments, dict)
                    and jsonschema.Draft202012Validator(tools[call["name"]]["parameters"]).is_valid(arguments))
    expected = item.call["arguments"]
    given = arguments if isinstance(arguments, dict) else {}
    matched = sum(key in given and given[key] == value for key, value in expected.items())
    return {"valid_json": 1.0, "schema_valid": float(schema_valid),
            "name_match": float(call.get("name") == item.call["name"]),
            "argument_match": matched / len(expected) if expected else float(given == {}),
            "exact_call": float(call.get("name") == item.call["name"] and given == expected)}


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_any_task(model: Transformer, tokenizer: TextTokenizer, task: Task, shots: int = 0,
                      limit: int | None = None, seed: int = 1234, max_new_tokens: int = 64) -> TaskResult:
    """Benchmark and choice formats through :func:`slmtrain.eval.tasks.evaluate_task`; generated replies, tap
    targets and function calls here, greedy until a newline, each item scored on its own (``scores``)."""
    if task.format not in DEPLOY_FORMATS or task.format in CHOICE_FORMATS:
        return evaluate_task(model, tokenizer, task, shots, limit, seed)
    indices = range(len(task.items) if limit is None else min(limit, len(task.items)))
    if not indices:
        raise ConfigError("limit", f"must be positive, got {limit}")
    scores: dict[str, list[float]] = {}
    for index in indices:
        item = task.items[index]
        output = greedy_until(model, tokenizer, fewshot_prefix(task, index, shots, seed) + item.prompt,
                              stop=("\n",), max_new_tokens=max_new_tokens)
        result = (score_function_call(item, output) if task.format == "function-call"
                  else score_reply(item, output, by_id=task.format == "tap-target"))
        for name, value in result.items():
            scores.setdefault(name, []).append(value)
    metrics = {name: sum(values) / len(values) for name, values in scores.items()}
    return TaskResult(task.name, task.format, shots, len(indices), metrics, scores)
