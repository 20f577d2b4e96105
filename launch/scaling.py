"""Scaling laws from the command line.

    python launch/scaling.py fit runs=FILE.csv|RUN_DIR[,...] [method=chinchilla|epoch] [drop_highest=5] [format=json]
    python launch/scaling.py budget compute=5.76e23 [law=chinchilla|epoch|FILE | E=.. A=.. B=.. alpha=.. beta=..]
    python launch/scaling.py budget target_loss=2.1 inference_tokens=2e12 [hardware=h100-sxm train_mfu=0.5 ...]
    python launch/scaling.py budget device=jetson-orin-nano-8gb precision=int4 context=4096 min_tokens_per_s=20
    python launch/scaling.py budget params=135e6 policy=inference_optimal inference_tokens=1e13
    python launch/scaling.py sweep recipe=demo out=runs/sweep d_models=[32,64,96,128] tokens_per_param=[0.25,0.5,1,2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from slmtrain.config import ConfigError, cli_main, split_args  # noqa: E402
from slmtrain.scaling.commands import run_budget, run_fit  # noqa: E402
from slmtrain.scaling.sweep import run_sweep  # noqa: E402

COMMANDS = ("fit", "budget", "sweep")


def main(argv: list[str]) -> int:
    words, options = split_args(argv, positional=1)
    if not words or words[0] not in COMMANDS:
        raise ConfigError("command", f"give a sub-command first; valid choices: {', '.join(COMMANDS)}")
    command = {"fit": run_fit, "budget": run_budget, "sweep": run_sweep}[words[0]]
    result = command(options)
    if options.get("format") == "json":
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    cli_main(main)()
