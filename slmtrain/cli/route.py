"""Route each query to the local model or the cloud, with a threshold calibrated to a quality target.

    python launch/route.py calibrate local=PATH cloud=URL_OR_PATH data=FILE out=ROUTER.json [target=0.95
                           confidence=0.95 cloud_key=KEY cloud_model=ID fit_fraction=0.3 embedding=true samples=0]
    python launch/route.py eval router=ROUTER.json data=HELD_OUT.jsonl [cloud_key=KEY price_per_million_tokens=1
                           plot=curve.png]
    python launch/route.py demo [out=runs/collab_demo max_digits=2]     # trains a pair on sums, serves, routes
    data: JSONL of {"prompt": ..., "answer": ...}; cloud: an OpenAI-compatible base URL (http://HOST:PORT/v1) or
    a model path; local: an slmtrain run/checkpoint or an HF directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmtrain.config import ConfigError, announce, build, cli_main, split_args

USAGE = "python launch/route.py calibrate|eval|demo KEY=VALUE ... (see the module docstring)"


def run(argv: list[str]) -> int:
    from slmtrain.collab import commands
    from slmtrain.eval.report import format_table

    words, overrides = split_args(argv, positional=1)
    command = words[0] if words else None
    if command == "calibrate":
        report = commands.calibrate(announce(build(commands.CalibrateOptions, overrides, usage=USAGE)))
        print(format_table([report]))
    elif command == "eval":
        report = commands.evaluate(announce(build(commands.EvalOptions, overrides, usage=USAGE)))
        print(format_table(report["rows"]))
        print(format_table([{k: v for k, v in report.items() if k not in ("rows", "curve")}]))
    elif command == "demo":
        from slmtrain.orchestrate import RouteDemoOptions, route_demo

        report = route_demo(announce(build(RouteDemoOptions, overrides, usage=USAGE)))
        print(format_table([report["calibration"]]))
        print(format_table(report["evaluation"]["rows"]))
        summary = Path(report["calibration"]["router"]).with_name("report.json")
        summary.write_text(json.dumps(report, indent=1) + "\n")
        print(f"cloud calls saved at the target: {report['evaluation']['cloud_calls_saved']:.1%}; report: {summary}")
    else:
        raise ConfigError("command", f"expected calibrate, eval or demo; usage: {USAGE}")
    return 0


main = cli_main(run, "slmtrain.collab.commands:CalibrateOptions", "slmtrain.collab.commands:EvalOptions", "slmtrain.orchestrate:RouteDemoOptions", doc=__doc__)
