"""Export a model to GGUF for llama.cpp.

    python launch/export_gguf.py model=PATH out=FILE.gguf [quant=f32|f16|bf16|q8_0|q5_1|q5_0|q4_1|q4_0]

The model's tokenizer travels in the file (SentencePiece or byte-level BPE); llama.cpp runs it as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from slmtrain.config import build, cli_main, split_args  # noqa: E402


@dataclass
class Args:
    model: str  # a preset, HF directory, run directory, checkpoint or GGUF file
    out: Path  # the GGUF file to write (appears only once complete)
    quant: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = "f16"  # type of the matrices


def main(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = build(Args, overrides, usage="model=PATH out=FILE.gguf [quant=f16|q8_0|q4_0|...]")
    from slmtrain.model.formats.gguf import export_gguf
    from slmtrain.artifacts import load_model

    loaded = load_model(args.model)
    summary = export_gguf(loaded.model, args.out, args.quant, loaded.tokenizer, name=Path(args.model).name)
    print(f"{summary['path']}: {summary['architecture']}, {summary['tensors']} tensors "
          f"({', '.join(summary['tensor_types'])}), "
          f"{summary['bytes']:,} bytes; vocabulary: {summary['vocabulary']}")
    return 0


if __name__ == "__main__":
    cli_main(main)()
