"""A deployment-fair leaderboard: capability (bits per byte, benchmark and deployment tasks, bootstrap intervals)
and cost (prefill/decode speed, TTFT, peak memory, weight bytes, energy) of every model at every precision, on the
same quantised weights.

    python launch/leaderboard.py models=A,B,... out=DIR [tasks=arc-mini,triage-mini,... text=FILE,...]
        [quant=none,int8,int4 device_profile=host dtype=bf16 context=512 shots=0 limit=N prompt=128 gen=32]
Models: slmtrain runs, HF directories or presets (random weights: cost only). Writes DIR/leaderboard.csv,
DIR/leaderboard.md, DIR/pareto_latency.png and DIR/pareto_memory.png, and prints the Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from slmtrain.config import build, cli_main, split_args  # noqa: E402
from slmtrain.eval.leaderboard import LeaderboardOptions, leaderboard, markdown_table, write_leaderboard  # noqa: E402

USAGE = "python launch/leaderboard.py models=A,B out=DIR [quant=none,int8 tasks=...]"


def main(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    options = build(LeaderboardOptions, overrides, usage=USAGE)
    rows = leaderboard(options)
    paths = write_leaderboard(rows, options.out)
    print(markdown_table(rows))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    cli_main(main)()
