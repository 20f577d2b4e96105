"""Train a tokenizer on a sample of curated text (unless already trained), then encode it into token shards.

    python launch/tokenize_data.py tokenizer=demo input=out/curated output=out/shards [workers=2 val_fraction=0.01
                              retrain=false tokenizer_dir=PATH]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmtrain.config import announce, build, cli_main, split_args
from slmtrain.data.shards import prepare_shards


@dataclass
class Args:
    tokenizer: str  # spec name (tokenizers/NAME.yaml), spec path, or trained tokenizer folder
    input: Path
    output: Path
    workers: int = 1
    val_fraction: float = 0.01
    retrain: bool = False
    tokenizer_dir: Path | None = None


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = announce(build(Args, overrides, usage="tokenizer=NAME input=CURATED output=SHARDS [workers=N ...]"))
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


main = cli_main(run, Args, doc=__doc__)
