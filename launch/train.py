"""Train a model from a recipe.

    python launch/train.py recipe=NAME [key.sub=value ...] [ckpt=last] [dry_run=true|json]
    python launch/train.py recipe=NAME grid.optim.lr=[1e-3,3e-3] grid.model.n_layer=[4,8]   # one run per combination
    python launch/train.py recipe=NAME ... launcher=slurm slurm.nodes=N slurm.ntasks_per_node=M [slurm.KEY=VALUE ...]
    python launch/train.py recipe=NAME ... print_sbatch=true [slurm.KEY=VALUE ...]   # the job script, not submitted
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

import dataclasses  # noqa: E402  (after the path fix: dataclasses imports tokenize)

from slmtrain.config import ConfigError, cli_main, parse_overrides  # noqa: E402
from slmtrain.model import presets  # noqa: E402
from slmtrain.train.config import expand_grid, load_recipe  # noqa: E402
from slmtrain.train.run import format_plan, plan, train  # noqa: E402
from slmtrain.train.slurm import launch_on_slurm  # noqa: E402


@cli_main
def main(argv: list[str]) -> int:
    args = parse_overrides(presets.expand_shorthand(argv))
    recipe = args.pop("recipe", None)
    ckpt = args.pop("ckpt", None)
    dry_run = args.pop("dry_run", False)
    if ckpt not in (None, "last"):
        raise ConfigError("ckpt", f"invalid value {ckpt!r}; valid choices: last")
    if dry_run not in (False, True, "json"):
        raise ConfigError("dry_run", f"invalid value {dry_run!r}; valid choices: true, false, json")
    launcher, print_sbatch = args.pop("launcher", "local"), args.pop("print_sbatch", False)
    if launcher not in ("local", "slurm"):
        raise ConfigError("launcher", f"invalid value {launcher!r}; valid choices: local, slurm")
    slurm_args = args.pop("slurm", {})
    if launcher == "slurm" or print_sbatch:
        print(launch_on_slurm(recipe, args, slurm_args, argv, print_only=print_sbatch))
        return 0
    runs = expand_grid(args)
    base_dir = load_recipe(recipe, runs[0][1]).run_path
    for name, overrides in runs:
        if name:  # a grid run: its own directory under the base run directory
            overrides = {**overrides, "run_dir": str(base_dir / name), "name": name}
        config = load_recipe(recipe, overrides)
        if dry_run == "json":
            print(json.dumps(plan(config)))
        elif dry_run:
            print(json.dumps(dataclasses.asdict(config), indent=2))
            print(format_plan(plan(config)))
        else:
            result = train(config, resume=ckpt == "last")
            print(json.dumps({"run_dir": str(config.run_path), **{k: v for k, v in result.items() if k != "samples"}}))
    return 0


if __name__ == "__main__":
    main()
