"""Index the user's documents for retrieval, once; ``launch/eval.py ... retrieval=DIR`` reads the saved index.

    python launch/index.py documents=NOTES.txt[,MORE.jsonl] out=DIR [method=bm25|minilm chunk_words=64]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmtrain.config import ConfigError, announce, build, cli_main, split_args

USAGE = "documents=FILE[,FILE] out=DIR [method=bm25|minilm chunk_words=64]"


@dataclass
class Args:
    documents: list[Path]  # plain text files, or JSONL with a "text" field per line
    out: Path  # the folder to write (it must not hold an index already)
    method: Literal["bm25", "minilm"] = "bm25"  # lexical BM25 or MiniLM sentence embeddings
    chunk_words: int = 64  # chunks are runs of whole lines of at most this many words

    def __post_init__(self) -> None:
        if not self.documents:
            raise ConfigError("documents", f"required: {USAGE}")
        if self.chunk_words <= 0:
            raise ConfigError("chunk_words", f"must be positive, got {self.chunk_words}")


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = announce(build(Args, overrides, usage=USAGE))
    from slmtrain.adapt.retrieval import build_index, save_index
    from slmtrain.data.shards import read_documents

    index = build_index(read_documents(args.documents), args.method, args.chunk_words)
    print(f"{save_index(index, args.out)}: {args.method} index of {len(index.chunks)} chunks")
    return 0


main = cli_main(run, Args, doc=__doc__)
