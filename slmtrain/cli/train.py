"""Train a model from a recipe.

    python launch/train.py recipe=NAME [key.sub=value ...] [ckpt=last|PATH] [dry_run=true|json]
    python launch/train.py recipe=NAME grid.optim.lr=[1e-3,3e-3] grid.model.n_layer=[4,8]   # one run per combination
    model=PRESET is short for model.preset=PRESET; trainer.KEY=VALUE is any lightning.Trainer argument.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

from slmtrain.config import ConfigError, build, cli_main, parse_overrides
from slmtrain.model import presets
from slmtrain.train.config import TrainConfig, expand_grid, load_recipe


@dataclass
class Args:
    recipe: str = "demo"  # recipes/NAME.yaml (built in) or a path to your own recipe YAML
    ckpt: str | None = None  # last: resume RUN_DIR/checkpoints/last.ckpt exactly; or a checkpoint path of the run
    dry_run: Literal["false", "true", "json"] = "false"  # print the resolved config and plan, train nothing


def run(argv: list[str]) -> int:
    overrides = parse_overrides(presets.expand_shorthand(argv))
    own = {f.name for f in dataclasses.fields(Args)}
    args = build(Args, {k: str(v).lower() if k == "dry_run" else v for k, v in overrides.items() if k in own})
    overrides = {k: v for k, v in overrides.items() if k not in own}
    runs = expand_grid(overrides)
    base_dir = load_recipe(args.recipe, runs[0][1]).run_path
    configs = [load_recipe(args.recipe, {**delta, "run_dir": str(base_dir / name), "name": name} if name else delta)
               for name, delta in runs]  # every run validated before any trains
    from slmtrain.train.run import RunInterrupted, plan

    for config in configs:
        if args.dry_run == "json":
            print(json.dumps(plan(config).to_dict()))
            continue
        print(f"config: {json.dumps(dataclasses.asdict(config))}", flush=True)
        if args.dry_run == "true":
            print(plan(config).format())
            continue
        from slmtrain.orchestrate import train_recipe

        try:
            result = train_recipe(config, resume=args.ckpt or False)
        except RunInterrupted as e:
            print(f"{e}: python launch/train.py recipe={args.recipe} {' '.join(argv_without_ckpt(argv))} ckpt=last")
            return 130
        print(json.dumps({"run_dir": str(config.run_path), **{k: v for k, v in result.items() if k != "samples"}}))
    return 0


def argv_without_ckpt(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith(("ckpt=", "recipe="))]


main = cli_main(run, Args, TrainConfig, doc=__doc__)
