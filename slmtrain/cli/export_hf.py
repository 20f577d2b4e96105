"""Export a model to a Hugging Face directory (config.json + model.safetensors, and its tokenizer when known) that
transformers.AutoModelForCausalLM.from_pretrained loads.

    python launch/export_hf.py model=PATH out=DIR [dtype=fp32|bf16|fp16]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmtrain.config import announce, build, cli_main, split_args

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Args:
    model: str  # a preset, HF directory, run directory, checkpoint or GGUF file (anything load_model takes)
    out: Path  # the directory to write
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # of the written tensors


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = announce(build(Args, overrides, usage="model=PATH out=DIR [dtype=fp32|bf16|fp16]"))
    import torch

    from slmtrain.model.formats.hf import export_hf
    from slmtrain.artifacts import load_model

    loaded = load_model(args.model)
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


main = cli_main(run, Args, doc=__doc__)
