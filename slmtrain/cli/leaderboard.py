"""A deployment-fair leaderboard: capability (bits per byte, benchmark and deployment tasks, bootstrap intervals)
and cost (prefill/decode speed, TTFT, peak memory, weight bytes, energy) of every model at every precision, on the
same quantised weights.

    python launch/leaderboard.py models=A,B,... out=DIR [tasks=arc-mini,triage-mini,... text=FILE,...]
        [quant=none,int8,int4 hardware=host dtype=bf16 context=512 shots=0 limit=N prompt=128 gen=32]
Models: slmtrain runs, HF directories or presets (random weights: cost only). Writes DIR/leaderboard.csv,
DIR/leaderboard.md, DIR/pareto_latency.png and DIR/pareto_memory.png, and prints the Markdown table.
"""

from __future__ import annotations

from slmtrain.config import announce, build, cli_main, split_args
from slmtrain.eval.leaderboard import LeaderboardOptions, leaderboard, markdown_table, write_leaderboard

USAGE = "python launch/leaderboard.py models=A,B out=DIR [quant=none,int8 tasks=...]"


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    options = announce(build(LeaderboardOptions, overrides, usage=USAGE))
    rows = leaderboard(options)
    paths = write_leaderboard(rows, options.out)
    print(markdown_table(rows))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


main = cli_main(run, LeaderboardOptions, doc=__doc__)
