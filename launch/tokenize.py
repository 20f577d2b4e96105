"""Train a tokenizer on a sample of curated text (unless already trained), then encode it into token shards.

    python launch/tokenize.py tokenizer=demo input=out/curated output=out/shards [workers=2 val_fraction=0.01
                              retrain=false tokenizer_dir=PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from dataclasses import dataclass  # noqa: E402

from slmtrain.config import build, cli_main, split_args  # noqa: E402
from slmtrain.data.shards import prepare_shards  # noqa: E402


@dataclass
class Args:
    tokenizer: str  # spec name (tokenizers/NAME.yaml), spec path, or trained tokenizer folder
    input: Path
    output: Path
    workers: int = 1
    val_fraction: float = 0.01
    retrain: bool = False
    tokenizer_dir: Path | None = None


def main(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = build(Args, overrides, usage="tokenizer=NAME input=CURATED output=SHARDS [workers=N ...]")
    stats = prepare_shards(args.tokenizer, args.input, args.output, args.workers, args.val_fraction, args.retrain,
                           args.tokenizer_dir)
    counts = stats["input"]
    print(f"tokenizer: {stats['tokenizer_dir']} ({'trained now' if stats['tokenizer_trained'] else 'existing'})")
    print(f"input: {counts['documents']} documents; skipped {counts['corrupt_lines']} corrupt lines, "
          f"{counts['missing_text']} without text, {counts['empty_text']} empty; "
          f"{len(counts['unreadable'])} unreadable files")
    for problem in counts["unreadable"]:
        print(f"  unreadable: {problem}")
    for split in ("train", "val"):
        print(f"{split}: {stats[split]['tokens']:,} tokens in {stats[split]['docs']:,} documents")
    print(f"shards: {stats['shards_written']} written, {stats['shards_skipped']} already done; "
          f"{stats['tokens_per_second']:,.0f} tokens/s -> {stats['output']}")
    return 0


if __name__ == "__main__":
    cli_main(main)()
