"""The ``slmtrain`` command: ``slmtrain COMMAND key=value ...`` runs one of the thin entry points of this package
(``python launch/NAME.py`` is the same command from a checkout). ``slmtrain COMMAND --help`` lists its keys."""

from __future__ import annotations

import importlib
import sys

# command -> module of slmtrain.cli holding its ``main`` (a cli_main-wrapped function)
COMMANDS = {
    "train": "train", "curate": "curate", "tokenize": "tokenize_data", "train-quality": "train_quality",
    "eval": "eval", "export-hf": "export_hf", "export-gguf": "export_gguf", "bench-device": "bench_device",
    "model-info": "model_info", "scaling": "scaling", "serve": "serve", "route": "route", "codesign": "codesign",
    "leaderboard": "leaderboard", "finetune": "finetune", "index": "index",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        asked = sys.argv[1:2] in (["-h"], ["--help"], ["help"])
        if len(sys.argv) >= 2 and not asked:
            print(f"error: unknown command {sys.argv[1]!r}; valid choices: {', '.join(COMMANDS)}", file=sys.stderr)
        print(__doc__.strip() + "\n\ncommands: " + ", ".join(COMMANDS), file=sys.stderr)
        sys.exit(0 if asked else 2)
    command = importlib.import_module(f"slmtrain.cli.{COMMANDS[sys.argv[1]]}")
    command.main(sys.argv[2:])
