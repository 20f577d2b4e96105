"""Curate raw documents with a declared pipeline (data_filters/NAME.yaml).

    python launch/curate.py filter=NAME input=PATH output=DIR [executor=local|slurm|ray] [workers=N] [wait=true]
                            [KEY=VALUE ...]

KEY=VALUE overrides the pipeline declaration, e.g. ``steps.language.languages=[en,fr]`` or
``steps.gopher_repetition.enabled=false``. With ``filter=demo`` and no input, the embedded demo corpus is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from dataclasses import dataclass, fields  # noqa: E402
from typing import Literal  # noqa: E402

from slmtrain.config import build, cli_main, split_args  # noqa: E402
from slmtrain.data.pipeline import format_table, run_pipeline  # noqa: E402


@dataclass
class Args:
    filter: str
    output: Path
    input: str | None = None  # a file, a folder, or hf://DATASET; optional for pipelines with a default input
    executor: Literal["local", "slurm", "ray"] = "local"
    workers: int = 1  # tasks run at the same time (local processes, Ray tasks, Slurm array jobs)
    wait: bool = False  # executor=slurm: wait for the jobs and write the stats (else return once submitted)


def main(argv: list[str]) -> int:
    _, values = split_args(argv)
    own = {f.name for f in fields(Args)}
    args = build(Args, {k: v for k, v in values.items() if k in own})
    overrides = {k: v for k, v in values.items() if k not in own}  # the rest tunes the pipeline declaration
    stats = run_pipeline(args.filter, args.input, args.output, overrides, args.executor, args.workers,
                         args.wait)
    if "totals" in stats:
        print(format_table(stats))
        print(f"kept documents: {stats['output']}/kept   stats: {stats['output']}/stats.json, stats.png")
    else:
        print(f"submitted to {stats['submitted']} (jobs {', '.join(stats['jobs'])}); logs under {stats['output']}/logs; "
              f"{stats['next']}")
    return 0


if __name__ == "__main__":
    cli_main(main)()
