"""Curate raw documents with a declared pipeline (data_filters/NAME.yaml).

    python launch/curate.py filter=NAME input=PATH output=DIR [executor=local|slurm|ray] [workers=auto|N] [wait=true]
                            [verbose=true] [KEY=VALUE ...]

KEY=VALUE overrides the pipeline declaration, e.g. ``steps.language.languages=[en,fr]``,
``steps.gopher_repetition.enabled=false`` or ``allow_mass_removal=true``. With ``filter=demo`` and no input, the
embedded demo corpus is built.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from slmtrain.config import announce, build, cli_main, split_args
from slmtrain.data.curate import run_pipeline
from slmtrain.data.curate.run import Submitted
from slmtrain.data.curate.stats import format_stats


@dataclass
class CurateOptions:
    filter: str  # a pipeline of data_filters/ (fineweb, fineweb_fast, dclm, ...) or a path to a YAML declaration
    output: Path  # output folder: kept/, removed/, rejected/, stats.json, curate.log
    input: str | None = None  # a file, a folder, or hf://DATASET; optional for pipelines with a default input
    executor: Literal["local", "slurm", "ray"] = "local"  # where the datatrove tasks run
    workers: int | Literal["auto"] = "auto"  # parallel tasks; auto: the cores of this machine
    verbose: bool = False  # true: datatrove's per-task logging on the terminal too (always in OUTPUT/curate.log)
    wait: bool = False  # executor=slurm: wait for the jobs and write the stats (else return once submitted)


def run(argv: list[str]) -> int:
    _, values = split_args(argv)
    own = {f.name for f in fields(CurateOptions)}
    options = announce(build(CurateOptions, {k: v for k, v in values.items() if k in own}))
    overrides = {k: v for k, v in values.items() if k not in own}  # the rest tunes the pipeline declaration
    stats = run_pipeline(options.filter, options.input, options.output, overrides, options.executor,
                         None if options.workers == "auto" else options.workers, options.wait, options.verbose)
    if isinstance(stats, Submitted):
        print(f"submitted to {stats.executor} (jobs {', '.join(stats.jobs)}); logs under {stats.output}/logs; "
              f"{stats.next}")
        return 0
    print(format_stats(stats))
    print(f"kept documents: {stats.output}/kept   stats: {stats.output}/stats.json, stats.png   log: "
          f"{stats.output}/curate.log")
    return 0


main = cli_main(run, CurateOptions, doc=__doc__)
