"""Train a model from a recipe: python launch/train.py recipe=NAME [key.sub=value ...] [ckpt=last] [dry_run=true|json]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from slmtrain.config import ConfigError, cli_main, parse_overrides  # noqa: E402
from slmtrain.model import presets  # noqa: E402
from slmtrain.train.config import load_recipe  # noqa: E402
from slmtrain.train.run import format_plan, plan, train  # noqa: E402


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
    config = load_recipe(recipe, args)
    if dry_run == "json":
        print(json.dumps(plan(config)))
        return 0
    if dry_run:
        print(json.dumps(config_dict(config), indent=2))
        print(format_plan(plan(config)))
        return 0
    result = train(config, resume=ckpt == "last")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return 0


def config_dict(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


if __name__ == "__main__":
    main()
