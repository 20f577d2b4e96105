"""Export a model to GGUF for llama.cpp.

    python launch/export_gguf.py model=PATH out=FILE.gguf [quant=f32|f16|bf16|q8_0|q5_1|q5_0|q4_1|q4_0]

The model's tokenizer travels in the file (SentencePiece or byte-level BPE); llama.cpp runs it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmtrain.config import announce, build, cli_main, split_args


@dataclass
class Args:
    model: str  # a preset, HF directory, run directory, checkpoint or GGUF file
    out: Path  # the GGUF file to write (appears only once complete)
    quant: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = "f16"  # type of the matrices


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = announce(build(Args, overrides, usage="model=PATH out=FILE.gguf [quant=f16|q8_0|q4_0|...]"))
    from slmtrain.model.formats.gguf import export_gguf
    from slmtrain.artifacts import load_model

    loaded = load_model(args.model)
    summary = export_gguf(loaded.model, args.out, args.quant, loaded.tokenizer, name=Path(args.model).name)
    print(f"{summary['path']}: {summary['architecture']}, {summary['tensors']} tensors "
          f"({', '.join(summary['tensor_types'])}), "
          f"{summary['bytes']:,} bytes; vocabulary: {summary['vocabulary']}")
    return 0


main = cli_main(run, Args, doc=__doc__)
