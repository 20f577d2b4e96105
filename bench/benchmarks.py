"""A real published model on real benchmarks: SmolLM2-135M-Instruct (bench/smollm2.py) scored by slmtrain and by
lm-evaluation-harness's ``hf`` model on the same documents (lm-eval's own task YAMLs pointed at the installed
validation splits), fp32, the same torch threads, the two sides alternating task by task (slmtrain first on even
tasks, lm-eval first on odd ones). Prints per task: slmtrain's acc and acc_norm on the whole split (or ``limit``),
both sides' on the documents lm-eval scored (its first ``lm_eval_limit``), the largest per-item log-likelihood
difference there, items/s of each and their ratio, and the model card's published figure.

    python bench/benchmarks.py [tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande limit=N lm_eval_limit=N
                                threads=2 lm_eval_batch=16 work=DIR json=FILE]
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
    threads: int = 2  # torch threads, both sides
    lm_eval_batch: int = 16  # lm-eval's batch size
    work: str | None = None  # keeps the exported model between runs (default: a temporary folder)
    json: str | None = None  # also write the rows here


def run(args: Args, work: Path) -> list[dict]:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from slmtrain.artifacts import load_model
    from slmtrain.eval.harness import write_local_harness_task
    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    torch.set_num_threads(args.threads)
    model_dir = work / "smollm2"
    if not (model_dir / "model.safetensors").is_file():
        export_smollm2(model_dir)
    ours = load_model(model_dir)
    theirs = HFLM(pretrained=str(model_dir), dtype="float32", add_bos_token=True, batch_size=args.lm_eval_batch,
                  device="cpu")
    rows = []
    for position, name in enumerate(args.tasks):
        task = load_task(name)
        lm_eval_limit = min(x for x in (args.limit, args.lm_eval_limit, len(task.items)) if x is not None)
        harness_task = write_local_harness_task(name, work / "tasks", lm_eval_limit)
        manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
        timed: dict[str, tuple[float, object]] = {}
        for side in (["slmtrain", "lm-eval"] if position % 2 == 0 else ["lm-eval", "slmtrain"]):
            started = time.perf_counter()
            if side == "slmtrain":
                result: object = evaluate_task(ours.model, ours.tokenizer, task, limit=args.limit)
            else:
                result = lm_eval.simple_evaluate(model=theirs, tasks=[harness_task], num_fewshot=0,
                                                 task_manager=manager, bootstrap_iters=0, log_samples=True)
            timed[side] = (time.perf_counter() - started, result)
        (our_s, mine), (their_s, out) = timed["slmtrain"], timed["lm-eval"]
        metrics = out["results"][harness_task]
        samples = sorted(out["samples"][harness_task], key=lambda s: s["doc_id"])
        shared = mine.records[: len(samples)]
        differences = [abs(a - float(r[0][0])) for record, sample in zip(shared, samples)
                       for a, r in zip(record["loglikelihoods"], sample["resps"])]
        card = MODEL_CARD.get("arc" if name.startswith("arc") else name)
        ours_speed, theirs_speed = mine.n / our_s, len(samples) / their_s
        rows.append({"task": name, "n": mine.n, "acc": mine.metrics["acc"], "acc_norm": mine.metrics.get("acc_norm"),
                     "model_card_acc_norm": card, "bpb": mine.metrics["bpb"], "n_lm_eval": len(samples),
                     "acc_same_docs": sum(r["acc"] for r in shared) / len(shared),
                     "lm_eval_acc": metrics["acc,none"],
                     "acc_norm_same_docs": sum(r["acc_norm"] for r in shared) / len(shared),
                     "lm_eval_acc_norm": metrics.get("acc_norm,none"), "max_loglik_diff": max(differences),
                     "items_per_s": ours_speed, "lm_eval_items_per_s": theirs_speed,
                     "speedup": ours_speed / theirs_speed})
        print(json.dumps(rows[-1]), flush=True)
    return rows


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
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
