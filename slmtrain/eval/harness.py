"""lm-evaluation-harness adapter: any harness task (built in, or a local YAML with local data) on an slmtrain model.

:class:`SlmtrainLM` implements the three request types of ``lm_eval.api.model.LM`` with the same scoring code as
:mod:`slmtrain.eval.scoring` and :mod:`slmtrain.eval.perplexity`, so a task scored both ways gives the same numbers.
Offline use: point ``include_path`` at a folder of task YAMLs whose ``dataset_path: json`` reads local files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from slmtrain.config import UserError
from slmtrain.eval import TextTokenizer, document_prefix_id
from slmtrain.eval.perplexity import sequence_nll
from slmtrain.eval.scoring import BATCH_TOKENS, encode_pair, greedy_until, loglikelihoods
from slmtrain.model.transformer import Transformer


class SlmtrainLM(LM):
    """Greedy generation only: a request asking to sample is refused rather than silently decoded greedily."""

    def __init__(self, model: Transformer, tokenizer: TextTokenizer, batch_tokens: int = BATCH_TOKENS,
                 max_gen_tokens: int = 256):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_tokens, self.max_gen_tokens = batch_tokens, max_gen_tokens  # packed tokens per forward pass

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation) for context, continuation in
                 (r.args for r in requests)]
        return [(s.loglikelihood, s.is_greedy) for s in loglikelihoods(self.model, pairs, self.batch_tokens)]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        prefix = document_prefix_id(self.tokenizer)
        return [-sequence_nll(self.model, [prefix, *self.tokenizer.encode(r.args[0])]) for r in requests]

    def generate_until(self, requests: list[Any]) -> list[str]:
        outputs = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise UserError("SlmtrainLM decodes greedily; the task asks for sampling (do_sample/temperature)")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            output, _ = greedy_until(self.model, self.tokenizer, context, until,
                                     int(kwargs.get("max_gen_toks", self.max_gen_tokens)))
            outputs.append(output)
        return outputs


def run_harness(model: Transformer, tokenizer: TextTokenizer, tasks: Sequence[str],
                include_path: str | Path | None = None, shots: int | None = None, limit: int | None = None,
                log_samples: bool = False, batch_tokens: int = BATCH_TOKENS) -> dict[str, Any]:
    """Run harness tasks by name: those of ``include_path`` when given, else the harness's built-in ones (which
    need their datasets in the local Hugging Face cache: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set, nothing is
    downloaded). Returns lm_eval's result dict (``results`` per task, ``samples`` if logged)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # With include_path only its tasks are indexed: indexing the thousands of built-in task files takes many
    # seconds, and built-in tasks would try to download their datasets anyway.
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"task YAMLs in {include_path}" if include_path else "built-in tasks (include_path= adds local ones)"
        raise UserError(f"unknown harness task(s) {', '.join(unknown)} among the {where}")
    results = lm_eval.simple_evaluate(model=SlmtrainLM(model, tokenizer, batch_tokens), tasks=list(tasks),
                                      num_fewshot=shots, limit=limit, task_manager=manager, bootstrap_iters=0,
                                      log_samples=log_samples)
    if results is None:
        raise UserError("lm-evaluation-harness returned no results")
    return results


# lm-eval's own task YAML for each benchmark (under lm_eval/tasks/); the documents are the installed split of
# slmtrain.eval.benchmarks.COMMONSENSE, and for MMLU one subject's test split (its dev split given too, as lm-eval's
# few-shot split)
LM_EVAL_YAMLS: dict[str, str] = {
    "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml", "sciq": "sciq/sciq.yaml", "boolq": "super_glue/boolq/default.yaml",
    "social_iqa": "siqa/siqa.yaml", "commonsense_qa": "commonsense_qa/default.yaml",
    "copa": "super_glue/copa/default.yaml", "mmlu_anatomy": "mmlu/default/mmlu_anatomy.yaml",
}


def installed_split(name: str) -> tuple[str, str]:
    """The installed split lm-eval's copy of benchmark ``name`` reads, and the split name it reads it as."""
    from slmtrain.eval.benchmarks import COMMONSENSE

    if name == "mmlu_anatomy":
        return "hails/mmlu_no_train/anatomy/test", "test"
    return COMMONSENSE[name][0], "validation"


def write_local_harness_task(name: str, folder: Path, limit: int | None = None) -> str:
    """lm-eval's own YAML for benchmark ``name``, included whole, with only its dataset pointed at a local JSON
    file of the first ``limit`` installed documents: lm-eval's prompts and metrics on exactly the documents slmtrain
    scores. Returns the task name to pass to lm-eval with ``include_path=folder``."""
    import json

    import lm_eval.tasks

    from slmtrain.eval.benchmark_data import read_split

    yaml = LM_EVAL_YAMLS[name]
    split, as_split = installed_split(name)
    folder.mkdir(parents=True, exist_ok=True)
    docs = read_split(split)[:limit]
    data = folder / f"{name}.jsonl"
    # google/boolq's `answer` is super_glue's `label`, the column lm-eval's YAML reads (the same documents)
    data.write_text("".join(json.dumps({**d, "label": int(d["answer"])} if name == "boolq" else d) + "\n"
                            for d in docs), encoding="utf-8")
    files = {as_split: str(data)}
    if name.startswith("mmlu_"):  # its few-shot split must exist, though zero shots may be drawn from it
        dev = folder / f"{name}_dev.jsonl"
        dev.write_text("".join(json.dumps(d) + "\n" for d in read_split(split.replace("/test", "/dev"))))
        files["dev"] = str(dev)
    task = f"{name}_local"
    override = {"include": str(Path(lm_eval.tasks.__file__).parent / yaml), "task": task, "tag": [],
                "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": files, "cache_dir": str(folder / "cache")},
                "training_split": None, "validation_split": "validation" if as_split == "validation" else None,
                "test_split": "test" if as_split == "test" else None}
    (folder / f"{task}.yaml").write_text(json.dumps(override), encoding="utf-8")  # JSON is YAML
    return task
