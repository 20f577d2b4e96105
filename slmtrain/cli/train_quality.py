"""Train a model-based quality filter and report its held-out quality.

    python launch/train_quality.py kind=fasttext positives=GOOD[,MORE] negatives=BAD[,MORE] out=model.bin
    python launch/train_quality.py kind=embedding annotations=FILE.jsonl out=head.npz

Inputs are JSONL files (or folders/globs of them) with a ``text`` field; annotations also carry a 0-5 ``score``.
fastText reports precision/recall of the positive class; the embedding head reports MAE/RMSE against the mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slmtrain.config import ConfigError, announce, build, cli_main, split_args


@dataclass
class Args:
    kind: Literal["fasttext", "embedding"]
    out: Path
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)
    held_out: float = 0.1

    def __post_init__(self) -> None:
        if self.kind == "fasttext" and not (self.positives and self.negatives):
            raise ConfigError("positives", "kind=fasttext needs positives=... and negatives=...")
        if self.kind == "embedding" and not self.annotations:
            raise ConfigError("annotations", "kind=embedding needs annotations=FILE.jsonl")
        if not 0 < self.held_out < 1:
            raise ConfigError("held_out", f"must be in (0, 1), got {self.held_out}")


def run(argv: list[str]) -> int:
    _, values = split_args(argv)
    args = announce(build(Args, values))
    if args.kind == "fasttext":
        from slmtrain.data.filters.fasttext_quality import train_fasttext_classifier

        metrics = train_fasttext_classifier(args.positives, args.negatives, args.out, held_out=args.held_out)
    else:
        from slmtrain.data.filters.embedding_quality import train_embedding_head

        metrics = train_embedding_head(args.annotations, args.out, held_out=args.held_out)
    print(json.dumps(metrics, indent=2))
    print(f"saved {args.out}")
    return 0


main = cli_main(run, Args, doc=__doc__)
