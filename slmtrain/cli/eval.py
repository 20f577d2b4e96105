"""Capability of a model: benchmark tasks, perplexity / bits per byte, lm-evaluation-harness tasks, quantisation.

    python launch/eval.py model=PATH tasks=NAME|SUITE[,...] [shots=K limit=N format=olmes json=FILE]
    python launch/eval.py model=PATH text=FILE[,FILE] [quant=int8,int8-dynamic,int4]   # perplexity (+ quantised)
    python launch/eval.py model=PATH shards=DIR [split=val max_tokens=N]
    python launch/eval.py model=PATH tasks=NAME harness=true [include_path=DIR_OF_TASK_YAMLS]
    python launch/eval.py model=PATH tasks=NAME retrieval=INDEX_DIR|DOCS[,DOCS] [retrieval_method=bm25|minilm
                           retrieval_k=3]
    [csv=results.csv] appends every result row; model: an slmtrain run/checkpoint, an HF directory or a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slmtrain.config import ConfigError, UserError, announce, build, cli_main, split_args


@dataclass
class Args:
    model: str
    # benchmarks by lm-eval name, suites (commonsense, knowledge, math, icl, long_context, core), deploy tasks,
    # or .jsonl paths (an unknown name lists the valid ones)
    tasks: list[str] = field(default_factory=list)
    shots: int | None = None  # default: 0 (a suite's own counts for core), each task's own for harness tasks
    limit: int | None = None  # the first N documents of each task, in file order (lm-eval's --limit)
    format: Literal["lm-eval", "olmes"] = "lm-eval"  # olmes: the OLMES 5-shot RC and MC variants instead
    json: Path | None = None  # scores per task (JSON) and per-item records beside it (.items.jsonl)
    harness: bool = False  # run `tasks` through lm-evaluation-harness instead of slmtrain's own task files
    include_path: Path | None = None  # harness: a folder of local task YAMLs
    text: list[Path] = field(default_factory=list)
    shards: Path | None = None
    split: str = "val"
    max_tokens: int | None = None
    window: int | None = None
    stride: int | None = None
    quant: list[str] = field(default_factory=list)  # with text=: perplexity change of each scheme
    csv: Path | None = None
    retrieval: list[Path] = field(default_factory=list)  # a saved index (slmtrain index), or documents (.txt, .jsonl)
    retrieval_method: Literal["bm25", "minilm"] = "bm25"  # lexical BM25 or MiniLM embeddings (slmtrain.adapt.retrieval)
    retrieval_k: int = 3  # chunks put in front of each prompt

    def __post_init__(self) -> None:
        if not (self.tasks or self.text or self.shards):
            raise ConfigError("tasks", "nothing to evaluate: give tasks=NAME[,NAME], text=FILE[,FILE] or shards=DIR")
        if self.quant and not self.text:
            raise ConfigError("quant", "measuring the perplexity change needs text=FILE[,FILE]")
        if self.retrieval and (not self.tasks or self.harness):
            raise ConfigError("retrieval", "retrieval goes into slmtrain task prompts: give tasks=NAME (without harness)")
        if self.retrieval_k <= 0:
            raise ConfigError("retrieval_k", f"must be positive, got {self.retrieval_k}")
        if self.tasks and not self.harness:
            from slmtrain.eval.suites import SUITES, check_task_name

            for name in self.tasks:
                if name not in SUITES:
                    check_task_name(name)
        if self.shots is not None and self.shots < 0:
            raise ConfigError("shots", f"must be >= 0, got {self.shots}")
        for key in ("max_tokens", "window", "stride", "limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(key, f"must be >= 1 (or left out), got {value}")


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = announce(build(Args, overrides))
    from slmtrain.data.shards import read_documents
    from slmtrain.eval.perplexity import perplexity_of_shards, perplexity_of_texts
    from slmtrain.eval.report import append_csv, format_table
    from slmtrain.artifacts import load_model

    loaded = load_model(args.model)
    needs_tokenizer = args.tasks or args.text
    if needs_tokenizer and loaded.tokenizer is None:
        raise UserError(f"{loaded.source} has no tokenizer: tasks and text perplexity need one")
    rows = []
    if args.shards:
        result = perplexity_of_shards(loaded.model, args.shards, args.split, args.max_tokens, args.window,
                                      args.stride)
        rows.append({"eval": f"perplexity {args.shards} ({args.split})", **result.as_dict()})
    if args.text:
        documents = read_documents(args.text)
        if args.quant:
            from slmtrain.eval.quantize import quantization_table

            rows += [{"eval": f"perplexity text ({len(documents)} docs)", **row} for row in
                     quantization_table(loaded.model, loaded.tokenizer, documents, args.quant, window=args.window)]
        else:
            result = perplexity_of_texts(loaded.model, loaded.tokenizer, documents, args.window, args.stride)
            rows.append({"eval": f"perplexity text ({len(documents)} docs)", **result.as_dict()})
    if args.tasks and args.harness:
        from slmtrain.eval.harness import run_harness

        results = run_harness(loaded.model, loaded.tokenizer, args.tasks, args.include_path, args.shots, args.limit)
        rows += [{"eval": f"harness {name}", "shots": args.shots,
                  **{k: v for k, v in metrics.items() if k not in ("name", "alias") and "stderr" not in k}}
                 for name, metrics in results["results"].items()]
    elif args.tasks:
        rows += evaluate_tasks(loaded, args)
    rows = [{"model": loaded.source, **row} for row in rows]
    print(format_table(rows))
    if args.csv:
        print(f"appended {len(rows)} rows to {append_csv(args.csv, rows)}")
    return 0


def evaluate_tasks(loaded, args: Args) -> list[dict]:
    from slmtrain.eval.suites import EvalReport, evaluate

    if args.retrieval:
        from slmtrain.adapt.retrieval import open_index, with_retrieval
        from slmtrain.eval.scoring import evaluate_task
        from slmtrain.eval.tasks import load_task

        index = open_index(args.retrieval, args.retrieval_method)
        report = EvalReport(loaded.source)
        for name in args.tasks:
            task = with_retrieval(load_task(name), index, args.retrieval_k)
            report.results.append(evaluate_task(loaded.model, loaded.tokenizer, task, args.shots or 0, args.limit))
            report.keys.append(task.name)
    else:
        report = evaluate(loaded.model, loaded.tokenizer, args.tasks, args.shots, args.limit,
                          olmes=args.format == "olmes", source=loaded.source)
    if args.json:
        scores, items = report.write(args.json)
        print(f"wrote {scores} and {items}")
    if report.core is not None:
        print(f"core (centered, {len(report.core.centered)} of 22 tasks): {report.core.score:.4f}; "
              f"missing offline: {', '.join(report.core.missing)}")
    return [{"eval": f"task {row.pop('task')}", **row} for row in report.rows()]


main = cli_main(run, Args, doc=__doc__)
