"""One task registry: what an evaluation item is, and every task by name.

A task is a list of items of one kind with how to score them:

- :class:`MultipleChoice`: one (context, continuation) request per choice, exactly as lm-evaluation-harness builds
  them (the contexts are equal except under partial scoring, WinoGrande's). ``acc`` takes the highest summed
  log-likelihood, ``acc_norm`` the highest per character of the choice, and ``bpb`` is the bits per byte of the gold
  continuation (the small-scale signal of OLMo and DataDecide).
- :class:`Generation`: a prompt, greedy decoding until one of the task's stop strings, and the task's scorer
  comparing the output with the item's reference (exact match after the task's normalisation, or the deployment
  scorers of :mod:`slmtrain.eval.deploy_tasks`).

Names resolve in one place (:func:`load_task`): the benchmarks of :mod:`slmtrain.eval.benchmarks` (read offline from
the installed benchmark package), their OLMES variants (``NAME:rc``, ``NAME:mc``), the generated ``passkey`` task,
the deployment task files, and any JSONL file by path whose records are in one of the known formats.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmtrain.config import ConfigError, UserError

FEWSHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class MultipleChoice:
    contexts: tuple[str, ...]  # one per choice
    continuations: tuple[str, ...]  # one per choice, the target delimiter included (" Paris")
    label: int
    lengths: tuple[int, ...]  # characters acc_norm divides each log-likelihood by (lm-eval: the choice's text)

    def __post_init__(self) -> None:
        if not (len(self.contexts) == len(self.continuations) == len(self.lengths) >= 2):
            raise ValueError(f"a multiple-choice item needs >= 2 choices with a context, continuation and length "
                             f"each, got {len(self.contexts)}, {len(self.continuations)}, {len(self.lengths)}")
        if not 0 <= self.label < len(self.contexts):
            raise ValueError(f"label {self.label} is not one of the {len(self.contexts)} choices")

    @classmethod
    def shared(cls, context: str, choices: Sequence[str], label: int, delimiter: str = " ") -> MultipleChoice:
        """The common case: one context, each choice scored as ``delimiter + choice``."""
        return cls((context,) * len(choices), tuple(delimiter + c for c in choices), label,
                   tuple(len(c) for c in choices))

    def solved(self) -> str:
        return self.contexts[self.label] + self.continuations[self.label]

    def prefixed(self, prefix: str) -> MultipleChoice:
        return MultipleChoice(tuple(prefix + c for c in self.contexts), self.continuations, self.label, self.lengths)


@dataclass(frozen=True)
class Generation:
    prompt: str
    solution: str  # what follows the prompt when this item is a few-shot example
    reference: Any  # what the task's scorer compares the output with

    def solved(self) -> str:
        return self.prompt + self.solution

    def prefixed(self, prefix: str) -> Generation:
        return Generation(prefix + self.prompt, self.solution, self.reference)


Item = MultipleChoice | Generation
Scorer = Callable[[str, Any], dict[str, float]]  # (generated text, item.reference) -> metric values in [0, 1]


@dataclass
class Task:
    name: str
    items: list[Any]  # list[MultipleChoice] or list[Generation]
    metrics: tuple[str, ...] = ("acc", "acc_norm", "bpb")  # reported (multiple choice); a scorer's names otherwise
    family: str = "custom"  # the survey's task family: commonsense, knowledge, math, icl, long_context, deploy
    scorer: Scorer | None = None  # generation tasks
    until: tuple[str, ...] = (FEWSHOT_SEPARATOR,)  # generation stops before the first of these
    max_new_tokens: int = 256
    # put before every prompt, few-shot examples included (lm-eval's description); per group when a dict
    description: str | dict[str, str] = ""
    fewshot_delimiter: str = FEWSHOT_SEPARATOR
    # few-shot examples taken first-n (default: other items drawn with a seed); per group when a dict
    fewshot_items: list[Any] | dict[str, list[Any]] | None = None
    groups: list[str] | None = None  # per item (MMLU's subject): metrics are also macro-averaged over groups
    has_fewshot: bool = False  # the contexts already hold their curated examples (OLMES, passkey): shots= is refused
    notes: str = ""  # how this task differs from the standard harness, if it does
    build_for: Callable[..., Task] | None = None  # (tokenizer, max_seq_len) -> the task made for that model (passkey)

    @property
    def is_generation(self) -> bool:
        return self.scorer is not None


def fewshot_prefix(task: Task, index: int, shots: int, seed: int = 1234) -> str:
    """``shots`` solved examples then the task's description: from ``task.fewshot_items`` when the task has a
    separate few-shot split (taken first-n, as lm-eval's ``first_n`` sampler), else other items of the same split
    drawn with a seed that depends on the item (stable across runs, the item itself never among them)."""
    group = task.groups[index] if task.groups is not None else ""
    description = task.description[group] if isinstance(task.description, dict) else task.description
    if shots == 0:
        return description
    if task.has_fewshot:
        raise ConfigError("shots", f"{task.name} carries its own curated examples; leave shots out")
    pool = task.fewshot_items[group] if isinstance(task.fewshot_items, dict) else task.fewshot_items
    if pool is not None:
        if shots > len(pool):
            raise ConfigError("shots", f"{task.name} has {len(pool)} few-shot examples, not {shots}")
        chosen = pool[:shots]
    else:
        others = [i for i in range(len(task.items)) if i != index]
        if shots > len(others):
            raise ConfigError("shots", f"{shots} shots need {shots + 1} items; {task.name} has {len(task.items)}")
        chosen = [task.items[i] for i in random.Random(seed * 1_000_003 + index).sample(others, shots)]
    return description + "".join(example.solved() + task.fewshot_delimiter for example in chosen)


# ----------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TaskEntry:
    load: Callable[[], Task]
    family: str
    summary: str


REGISTRY: dict[str, TaskEntry] = {}


def register(name: str, family: str, summary: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    def add(load: Callable[[], Task]) -> Callable[[], Task]:
        if name in REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        REGISTRY[name] = TaskEntry(load, family, summary)
        return load
    return add


def _populate() -> None:
    """The modules that register tasks, imported on first use (they read nothing until a task is loaded)."""
    from slmtrain.eval import benchmarks, deploy_tasks, passkey  # noqa: F401


def task_names() -> list[str]:
    _populate()
    return sorted(REGISTRY)


def load_task(name_or_path: str | Path) -> Task:
    """A registered task by name, or a JSONL file by path (its format told by the first record's keys)."""
    _populate()
    name = str(name_or_path)
    if name in REGISTRY:
        return REGISTRY[name].load()
    path = Path(name_or_path)
    if path.suffix == ".jsonl" and path.is_file():
        return load_jsonl_task(path)
    from slmtrain.eval.suites import SUITES

    raise ConfigError("tasks", f"unknown task {name!r}; valid choices: {', '.join(task_names())}; suites: "
                               f"{', '.join(SUITES)} (or a path to a .jsonl file)")


# JSONL formats: (keys a record must have, record -> item, task options). Filled by the modules that define them.
JSONL_FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Item], dict[str, Any]]] = {}


def load_jsonl_task(path: Path) -> Task:
    """Every line one record of one format; a line that is not valid JSON or does not fit the format is an error
    naming the line: a score over silently fewer items would mislead."""
    _populate()
    items: list[Any] = []
    fmt = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as UTF-8 text ({type(e).__name__})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError(f"expected a JSON object, got {type(record).__name__}")
            fmt = fmt or _detect(record)
            items.append(JSONL_FORMATS[fmt][1](record))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{path}:{number}: not a valid {fmt or 'task'} record ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if fmt is None:
        raise UserError(f"{path}: no items")
    return Task(path.stem, items, **JSONL_FORMATS[fmt][2])


def _detect(record: dict[str, Any]) -> str:
    for name, (keys, _, _) in JSONL_FORMATS.items():
        if all(k in record for k in keys):
            return name
    raise UserError(f"record keys {sorted(record)} match no task format; formats: "
                    + "; ".join(f"{n}: {', '.join(k)}" for n, (k, _, _) in JSONL_FORMATS.items()))


@dataclass
class TaskResult:
    """One task's scores: the mean of each metric, its standard error (sample standard deviation / sqrt(n), as
    lm-eval), and every item's values (for intervals, paired comparisons and the per-item records)."""

    task: str
    family: str
    shots: int
    n: int
    metrics: dict[str, float]
    stderr: dict[str, float]
    scores: dict[str, list[float]] = field(default_factory=dict)
    truncated: int = 0  # items whose prompt was cut from the left to fit the model's context
    notes: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)  # per item: index, label or output, scores
    by_group: dict[str, dict[str, float]] = field(default_factory=dict)  # grouped tasks: each group's means
    skipped: int = 0  # items with a choice longer than the model's context: recorded, not scored

    @property
    def headline(self) -> str:
        """The metric a table ranks by: the first the task reports."""
        return next(iter(self.metrics))

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics, **{f"{k}_stderr": v for k, v in self.stderr.items()}, "n": self.n,
                "shots": self.shots, "truncated": self.truncated, "skipped": self.skipped}
