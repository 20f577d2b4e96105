"""Export a model to a Hugging Face directory (config.json + model.safetensors, and its tokenizer when known) that
transformers.AutoModelForCausalLM.from_pretrained loads.

    python launch/export_hf.py ckpt=PATH out=DIR [dtype=fp32|bf16|fp16]

ckpt: an slmtrain run directory or training checkpoint, or a Hugging Face directory (anything load_model takes).
"""

from __future__ import annotations

import os
import sys

# launch/tokenize.py shadows the standard library's `tokenize` (imported by dataclasses, inspect...): take launch/
# off the import path before anything imports it, then make the repository importable.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

from slmtrain.config import ConfigError, build, cli_main, split_args  # noqa: E402

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Args:
    ckpt: str
    out: Path
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"


def main(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    for required in ("ckpt", "out"):
        if required not in overrides:
            raise ConfigError(required, "required: ckpt=PATH out=DIR [dtype=fp32|bf16|fp16]")
    args = build(Args, overrides)
    import torch

    from slmtrain.model.hf import export_hf
    from slmtrain.model.load import load_model

    loaded = load_model(args.ckpt)
    tokenizer = loaded.tokenizer
    out = export_hf(
        loaded.model,
        args.out,
        tokenizer if hasattr(tokenizer, "save_hf") else None,
        bos_id=getattr(tokenizer, "bos_id", None),
        eos_id=getattr(tokenizer, "eos_id", None),
        dtype=getattr(torch, DTYPES[args.dtype]),
    )
    written = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {loaded.source} ({loaded.model.num_params():,} parameters, {args.dtype}) to {out}: {written}")
    return 0


if __name__ == "__main__":
    cli_main(main)()
