"""Suites of tasks by the survey's families, the DCLM-CORE-style centered score, and one evaluation report.

``commonsense``, ``knowledge``, ``math``, ``icl`` (the OLMES 5-shot variants) and ``long_context`` (passkey) are
lists of tasks; ``core`` is DCLM's CORE over the tasks of its 22 that are installed offline, each at DCLM's shot
count, centered: (accuracy - chance) / (1 - chance), averaged. CORE's other tasks (:data:`CORE_MISSING`) are not in
the benchmark package and are named in every report that uses ``core``. DCLM (llm-foundry) normalises multiple-choice
log-likelihoods per token; here acc_norm (per character, lm-eval's) where the task has it, acc otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmtrain.eval.tasks import TaskResult, load_task, task_names

if TYPE_CHECKING:
    from slmtrain.eval import TextTokenizer
    from slmtrain.model.transformer import Transformer

COMMONSENSE = ("hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "social_iqa",
               "commonsense_qa", "boolq", "copa", "sciq")
OLMES = ("hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "social_iqa", "commonsense_qa",
         "boolq", "sciq")
# (task, shots, chance accuracy) of DCLM's CORE that are installed offline
CORE = (("hellaswag", 0, 0.25), ("hellaswag", 10, 0.25), ("arc_easy", 10, 0.25), ("arc_challenge", 10, 0.25),
        ("boolq", 10, 0.62), ("commonsense_qa", 10, 0.2), ("copa", 0, 0.5), ("openbookqa", 0, 0.25),
        ("piqa", 10, 0.5), ("winogrande", 0, 0.5))
CORE_MISSING = ("agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_dyck_languages",
                "bigbench_language_identification", "bigbench_operators", "bigbench_qa_wikidata",
                "bigbench_repeat_copy_logic", "coqa", "jeopardy", "lambada_openai", "squad", "winograd")
SUITES: dict[str, tuple[tuple[str, int | None], ...]] = {
    "commonsense": tuple((name, None) for name in COMMONSENSE),
    "knowledge": (("mmlu", None), ("triviaqa", None), ("nq_open", None)),
    "math": (("gsm8k", None),),
    "icl": tuple((f"{name}:rc", None) for name in OLMES),
    "long_context": (("passkey", None),),
    "core": tuple((name, shots) for name, shots, _ in CORE),
}


@dataclass(frozen=True)
class Request:
    task: str
    shots: int | None  # None: the shots= given, else 0
    suite: str = ""


def expand(names: Sequence[str], olmes: bool = False) -> list[Request]:
    """Suite names become their tasks; with ``olmes`` each commonsense task becomes its RC and MC variants."""
    requests: list[Request] = []
    for name in names:
        members = SUITES.get(name, ((name, None),))
        for task, shots in members:
            if olmes and task in OLMES:
                requests += [Request(f"{task}:rc", None, name), Request(f"{task}:mc", None, name)]
            else:
                requests.append(Request(task, shots, name if name in SUITES else ""))
    for request in requests:  # every name checked before anything is scored
        check_task_name(request.task)
    return requests


def check_task_name(name: str) -> None:
    """A one-line error listing the valid names unless ``name`` is a task or a task file (reads no data)."""
    if name not in task_names() and not (name.endswith(".jsonl") and Path(name).is_file()):
        load_task(name)  # raises the error listing the valid names


@dataclass
class CoreScore:
    score: float  # mean centered accuracy over the tasks present
    centered: dict[str, float]
    missing: tuple[str, ...] = CORE_MISSING


@dataclass
class EvalReport:
    model: str
    results: list[TaskResult] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each result's name in the report (task, or task@Kshot)
    core: CoreScore | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: {"family": r.family, **r.as_dict(), **({"notes": r.notes} if r.notes else {}),
                                     **({"by_group": r.by_group} if r.by_group else {})}
                               for key, r in zip(self.keys, self.results)}
        if self.core is not None:
            out["core"] = {"score": self.core.score, "centered": self.core.centered, "missing": list(self.core.missing)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for key, result in zip(self.keys, self.results):
            main = {m: v for m, v in result.metrics.items() if not m.endswith("_micro")}
            rows.append({"family": result.family, "task": key, "shots": result.shots, "n": result.n, **main,
                         **{f"{m}_stderr": result.stderr[m] for m in main}, "truncated": result.truncated,
                         "skipped": result.skipped})
        return rows

    def write(self, path: Path) -> tuple[Path, Path]:
        """``path`` (the scores) and ``path`` with ``.items.jsonl`` (one record per item and task) beside it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        items = path.with_suffix(".items.jsonl")
        with open(items, "w", encoding="utf-8") as f:
            for key, result in zip(self.keys, self.results):
                for record in result.records:
                    f.write(json.dumps({"task": key, **record}) + "\n")
        return path, items


def evaluate(model: Transformer, tokenizer: TextTokenizer, names: Sequence[str], shots: int | None = None,
             limit: int | None = None, olmes: bool = False, source: str = "", seed: int = 1234) -> EvalReport:
    """Every task and suite of ``names``; a suite's own shot counts (core's) win over ``shots``."""
    from slmtrain.eval.scoring import evaluate_task

    report = EvalReport(source)
    requests = expand(names, olmes)
    scored: dict[tuple[str, int], str] = {}  # (task, shots) -> its key in the report
    for request in requests:
        task = load_task(request.task)
        k = request.shots if request.shots is not None else (0 if task.has_fewshot else shots or 0)
        if (task.name, k) in scored:
            continue
        key = task.name if request.shots is None or k == 0 else f"{task.name}@{k}shot"
        if key in report.keys:  # the same task at another shot count (shots=K beside core's 0-shot run)
            key = f"{task.name}@{k}shot"
        scored[(task.name, k)] = key
        report.results.append(evaluate_task(model, tokenizer, task, k, limit, seed))
        report.keys.append(key)
    if any(request.suite == "core" for request in requests):
        centered = {}
        for name, k, chance in CORE:
            key = scored[(name, k)]
            result = report.results[report.keys.index(key)]
            accuracy = result.metrics.get("acc_norm", result.metrics["acc"])
            centered[key] = (accuracy - chance) / (1 - chance)
        report.core = CoreScore(sum(centered.values()) / len(centered), centered)
    return report
