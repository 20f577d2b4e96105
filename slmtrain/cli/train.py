"""Train a model from a recipe.

    python launch/train.py recipe=NAME [key.sub=value ...] [ckpt=last|PATH] [dry_run=true|json]
    python launch/train.py recipe=NAME grid.optim.lr=[1e-3,3e-3] grid.model.n_layer=[4,8]   # one run per combination
    python launch/train.py recipe=NAME ... launcher=slurm slurm.nodes=N slurm.ntasks_per_node=M [slurm.KEY=VALUE ...]
    python launch/train.py recipe=NAME ... print_sbatch=true [slurm.KEY=VALUE ...]   # the job script, not submitted
    model=PRESET is short for model.preset=PRESET; trainer.KEY=VALUE is any lightning.Trainer argument.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from slmtrain.config import ConfigError, announce, build, cli_main, parse_overrides
from slmtrain.model import presets
from slmtrain.train.config import TrainConfig, expand_grid, load_recipe


@dataclass
class Args:
    recipe: str = "demo"  # recipes/NAME.yaml (built in) or a path to your own recipe YAML
    ckpt: str | None = None  # last: resume RUN_DIR/checkpoints/last.ckpt exactly; or a checkpoint path of the run
    dry_run: Literal["false", "true", "json"] = "false"  # print the resolved config and plan, train nothing
    launcher: Literal["local", "slurm"] = "local"  # slurm: submit the run as an sbatch job (srun starts the ranks)
    print_sbatch: bool = False  # print the Slurm job script instead of submitting or training
    slurm: dict[str, Any] = field(default_factory=dict)  # sbatch options: nodes, ntasks_per_node, partition, ...


def run(argv: list[str]) -> int:
    overrides = parse_overrides(presets.expand_shorthand(argv))
    own = {f.name for f in dataclasses.fields(Args)}
    args = build(Args, {k: str(v).lower() if k == "dry_run" else v for k, v in overrides.items() if k in own})
    overrides = {k: v for k, v in overrides.items() if k not in own}
    if args.launcher == "slurm" or args.print_sbatch:
        from slmtrain.train.slurm import launch_on_slurm

        print(launch_on_slurm(args.recipe, overrides, args.slurm, argv, print_only=args.print_sbatch))
        return 0
    runs = expand_grid(overrides)
    base_dir = load_recipe(args.recipe, runs[0][1]).run_path
    configs = [load_recipe(args.recipe, {**delta, "run_dir": str(base_dir / name), "name": name} if name else delta)
               for name, delta in runs]  # every run validated before any trains
    for config in configs:
        if config.eval.tasks:  # the names, here: the training room does not know the evaluation room's tasks
            from slmtrain.eval.suites import expand

            try:
                expand(config.eval.tasks)
            except ConfigError as e:
                raise ConfigError(f"eval.{e.key}", e.message) from None
    from slmtrain.train.parallel import launched_rank
    from slmtrain.train.run import RunInterrupted, plan

    speaks = launched_rank() == 0
    for config in configs:
        if args.dry_run == "json":
            print(json.dumps(plan(config).to_dict()))
            continue
        if speaks:
            announce(config)
        if args.dry_run == "true":
            print(plan(config).format())
            continue
        from slmtrain.orchestrate import train_recipe

        try:
            result = train_recipe(config, resume=args.ckpt or False)
        except RunInterrupted as e:
            if speaks:
                print(f"{e}: python launch/train.py recipe={args.recipe} {' '.join(argv_without_ckpt(argv))} ckpt=last")
            return 130
        if speaks:
            print(json.dumps({"run_dir": str(config.run_path), **{k: v for k, v in result.items() if k != "samples"}}))
    return 0


def argv_without_ckpt(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith(("ckpt=", "recipe="))]


main = cli_main(run, Args, TrainConfig, doc=__doc__)
