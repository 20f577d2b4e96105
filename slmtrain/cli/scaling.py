"""Scaling laws from the command line.

    python launch/scaling.py fit runs=FILE.csv|RUN_DIR[,...] [method=chinchilla|epoch] [drop_highest=5] [format=json]
    python launch/scaling.py budget compute=5.76e23 [law=chinchilla|epoch|FILE | E=.. A=.. B=.. alpha=.. beta=..]
    python launch/scaling.py budget target_loss=2.1 inference_tokens=2e12 [hardware=h100-sxm train_mfu=0.5 ...]
    python launch/scaling.py budget hardware=jetson-orin-nano-8gb deploy=true precision=int4 context=4096 min_tokens_per_s=20
    python launch/scaling.py budget params=135e6 policy=inference_optimal inference_tokens=1e13
    python launch/scaling.py sweep recipe=demo out=runs/sweep d_models=[32,64,96,128] tokens_per_param=[0.25,0.5,1,2]
"""

from __future__ import annotations

import json

from slmtrain.config import ConfigError, announce, build, cli_main, split_args
from slmtrain.orchestrate import SweepOptions, run_sweep
from slmtrain.scaling.commands import BudgetOptions, FitOptions, run_budget, run_fit

COMMANDS = ("fit", "budget", "sweep")


def run(argv: list[str]) -> int:
    words, options = split_args(argv, positional=1)
    if not words or words[0] not in COMMANDS:
        raise ConfigError("command", f"give a sub-command first; valid choices: {', '.join(COMMANDS)}")
    command, option_class = {"fit": (run_fit, FitOptions), "budget": (run_budget, BudgetOptions),
                             "sweep": (run_sweep, SweepOptions)}[words[0]]
    announce(build(option_class, options))
    result = command(options)
    if options.get("format") == "json":
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


main = cli_main(run, FitOptions, BudgetOptions, SweepOptions, doc=__doc__)
