"""A real published model on real benchmarks: SmolLM2-135M-Instruct (bench/smollm2.py) scored by slmtrain and by
lm-evaluation-harness's ``hf`` model on the same documents (lm-eval's own task YAMLs pointed at the installed
validation splits), fp32, the same torch threads. Prints per task: slmtrain's acc and acc_norm on the whole split (or
``limit``), both sides' on the documents lm-eval scored (its first ``lm_eval_limit``), the largest per-item
log-likelihood difference there, and the model card's published figure. Then the speed: items/s of each side on the
first ``speed_items`` documents of each task, the sides alternating ``rounds`` times (slmtrain first in even rounds),
so that a change in the machine's load falls on both; the ratio is the median of the rounds' ratios.

    python bench/benchmarks.py [tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande limit=N lm_eval_limit=N
                                speed_items=200 rounds=3 threads=2 lm_eval_batch=16 work=DIR json=FILE
                                accuracy=true]
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "bench"]

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench.smollm2 import export_smollm2  # noqa: E402
from slmtrain.config import build, parse_overrides  # noqa: E402

# SmolLM2-135M-Instruct's model card (lighteval, zero-shot, acc_norm, the original bf16 weights)
MODEL_CARD = {"hellaswag": 40.9, "arc": 37.3, "piqa": 66.3}


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande"])
    limit: int | None = None  # the first N documents of each split (None: the whole validation split)
    lm_eval_limit: int | None = None  # lm-eval scores the first N of those (None: all of them)
    accuracy: bool = True  # false: the speed rounds only
    speed_items: int = 200  # documents per task in each timed round
    rounds: int = 3  # timed rounds, the sides alternating
    threads: int = 2  # torch threads, both sides
    lm_eval_batch: int = 16  # lm-eval's batch size
    work: str | None = None  # keeps the exported model between runs (default: a temporary folder)
    json: str | None = None  # also write the rows here


def run(args: Args, work: Path) -> list[dict]:
    import torch
    from lm_eval.models.huggingface import HFLM

    from slmtrain.artifacts import load_model

    torch.set_num_threads(args.threads)
    model_dir = work / "smollm2"
    if not (model_dir / "model.safetensors").is_file():
        export_smollm2(model_dir)
    ours = load_model(model_dir)
    theirs = HFLM(pretrained=str(model_dir), dtype="float32", add_bos_token=True, batch_size=args.lm_eval_batch,
                  device="cpu")
    rows = [accuracy_row(args, work, name, ours, theirs) for name in args.tasks] if args.accuracy else []
    for name in args.tasks:
        rows.append(speed_row(args, work, name, ours, theirs))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def harness_run(theirs, work: Path, name: str, limit: int | None) -> tuple[float, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slmtrain.eval.harness import write_local_harness_task

    harness_task = write_local_harness_task(name, work / "tasks", limit)
    manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(model=theirs, tasks=[harness_task], num_fewshot=0, task_manager=manager,
                                  bootstrap_iters=0, log_samples=True)
    return time.perf_counter() - started, {"results": out["results"][harness_task],
                                           "samples": sorted(out["samples"][harness_task], key=lambda s: s["doc_id"])}


def accuracy_row(args: Args, work: Path, name: str, ours, theirs) -> dict:
    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    task = load_task(name)
    mine = evaluate_task(ours.model, ours.tokenizer, task, limit=args.limit)
    lm_eval_limit = min(x for x in (args.limit, args.lm_eval_limit, len(task.items)) if x is not None)
    _, out = harness_run(theirs, work, name, lm_eval_limit)
    samples, metrics = out["samples"], out["results"]
    shared = mine.records[: len(samples)]
    differences = [abs(a - float(r[0][0])) for record, sample in zip(shared, samples)
                   for a, r in zip(record["loglikelihoods"], sample["resps"])]
    row = {"task": name, "n": mine.n, "acc": mine.metrics["acc"], "acc_norm": mine.metrics.get("acc_norm"),
           "model_card_acc_norm": MODEL_CARD.get("arc" if name.startswith("arc") else name),
           "bpb": mine.metrics["bpb"], "n_lm_eval": len(samples),
           "acc_same_docs": sum(r["acc"] for r in shared) / len(shared), "lm_eval_acc": metrics["acc,none"],
           "acc_norm_same_docs": sum(r["acc_norm"] for r in shared) / len(shared),
           "lm_eval_acc_norm": metrics.get("acc_norm,none"), "max_loglik_diff": max(differences)}
    print(json.dumps(row), flush=True)
    return row


def speed_row(args: Args, work: Path, name: str, ours, theirs) -> dict:
    import statistics

    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    n = min(args.speed_items, len(load_task(name).items))
    ratios, mine, harness = [], [], []
    for round_ in range(args.rounds):
        for side in (["slmtrain", "lm-eval"] if round_ % 2 == 0 else ["lm-eval", "slmtrain"]):
            if side == "slmtrain":  # from the task's name to its scores, as lm-eval's side is timed
                started = time.perf_counter()
                evaluate_task(ours.model, ours.tokenizer, load_task(name), limit=n)
                mine.append(n / (time.perf_counter() - started))
            else:
                seconds, _ = harness_run(theirs, work, name, n)
                harness.append(n / seconds)
        ratios.append(mine[-1] / harness[-1])
    return {"task": name, "speed_items": n, "items_per_s": statistics.median(mine),
            "lm_eval_items_per_s": statistics.median(harness), "speedup": statistics.median(ratios),
            "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}"}


def main(argv: list[str]) -> None:
    args = build(Args, parse_overrides(argv))
    from slmtrain.eval.report import format_table

    if args.work:
        rows = run(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(args, Path(tmp))
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, fp32), 0-shot, {args.threads} threads, "
          f"lm-eval batch {args.lm_eval_batch}")
    print(format_table([r for r in rows if "acc" in r]))
    print(format_table([r for r in rows if "speedup" in r]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
