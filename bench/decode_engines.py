"""Decode speed of one model in slmtrain's PyTorch engine and in llama.cpp, on the same threads, against the
bandwidth roofline of this machine.

    python bench/decode_engines.py [model=smollm2-135m engines=pytorch-fp32,pytorch-fp16,pytorch-bf16,pytorch-int8,
                                    llama.cpp-f16,llama.cpp-q8_0,llama.cpp-q4_0 threads=2 gen=32 depth=64 rounds=3]

``model`` is anything load_model takes (a preset has random weights: decode speed does not depend on them). Every
round decodes ``gen`` tokens after ``depth`` tokens of context on each engine in turn, so machine noise hits all
alike. Prints tokens/s (mean and spread over rounds), the ratio to llama.cpp f16, the roofline (bandwidth / bytes
read per token, from this host's measured copy bandwidth) and measured/roofline.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from slmtrain.artifacts import load_model  # noqa: E402
from slmtrain.config import build, check_choice, split_args  # noqa: E402
from slmtrain.eval import llamacpp  # noqa: E402
from slmtrain.eval.quantize import quantize_model  # noqa: E402
from slmtrain.eval.report import format_table  # noqa: E402
from slmtrain.eval.runtime import decode_timing, roofline_decode_tokens_per_s, sample_std, weight_bytes  # noqa: E402
from slmtrain.hardware import measure_host_profile  # noqa: E402
from slmtrain.model.formats.gguf import export_gguf  # noqa: E402

ENGINES = ("pytorch-fp32", "pytorch-fp16", "pytorch-bf16", "pytorch-int8",
           "llama.cpp-f16", "llama.cpp-q8_0", "llama.cpp-q4_0")
REFERENCE = "llama.cpp-f16"
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Args:
    model: str = "smollm2-135m"  # preset, HF directory, run directory, checkpoint or GGUF file
    engines: list[str] = field(default_factory=lambda: list(ENGINES))
    threads: int = 2  # for both engines
    gen: int = 32  # tokens decoded per round
    depth: int = 64  # tokens already in the KV cache
    rounds: int = 3  # timed rounds per engine, after one untimed warm-up round

    def __post_init__(self) -> None:
        for engine in self.engines:
            check_choice("engines", engine, ENGINES)


@dataclass
class Engine:
    name: str
    decode_seconds: Callable[[], float]  # one timed decode of gen tokens
    weight_bytes: int
    kv_bytes: int  # KV cache read per token at the mean context
    tokens_per_s: list[float] = field(default_factory=list)


def pytorch_engine(name: str, model, args: Args) -> Engine:
    precision = name.removeprefix("pytorch-")
    if precision in HALF_DTYPES:  # a copy: Module.to converts in place, and every engine shares the loaded model
        model = copy.deepcopy(model).to(HALF_DTYPES[precision])
    elif precision == "int8":
        model, _ = quantize_model(model, "int8")
    element = 2 if precision in HALF_DTYPES else 4
    return Engine(name, lambda: decode_timing(model, args.gen, args.depth, repeats=1, warmup=0).seconds[0],
                  weight_bytes(model), model.config.kv_cache_bytes_per_token(element) * (args.depth + args.gen // 2))


def llama_cpp_engine(name: str, model, args: Args, folder: Path) -> Engine:
    quant = name.removeprefix("llama.cpp-")
    path = folder / f"{quant}.gguf"
    export_gguf(model, path, quant)
    llm = llamacpp.open_gguf(path, args.threads, context=args.depth + args.gen)
    vocab = model.config.vocab_size
    kv = model.config.kv_cache_bytes_per_token(llamacpp.KV_CACHE_ELEMENT_BYTES) * (args.depth + args.gen // 2)
    return Engine(name, lambda: llamacpp.decode_timing(llm, vocab, args.gen, args.depth, 1, 0).seconds[0],
                  llamacpp.model_bytes(llm), kv)


def main(argv: list[str]) -> None:
    args = build(Args, split_args(argv)[1])
    torch.set_num_threads(args.threads)
    model = load_model(args.model).model.eval()
    profile = measure_host_profile()
    with tempfile.TemporaryDirectory() as folder:
        engines = [pytorch_engine(name, model, args) if name.startswith("pytorch") else
                   llama_cpp_engine(name, model, args, Path(folder)) for name in args.engines]
        for round_index in range(args.rounds + 1):  # round 0 warms every engine up
            for engine in engines:
                seconds = engine.decode_seconds()
                if round_index:
                    engine.tokens_per_s.append(args.gen / seconds)
    reference = next((e for e in engines if e.name == REFERENCE), engines[0])
    mean = {e.name: sum(e.tokens_per_s) / len(e.tokens_per_s) for e in engines}
    rows = []
    for e in engines:
        roofline = roofline_decode_tokens_per_s(profile, e.weight_bytes, e.kv_bytes)
        rows.append({"engine": e.name, "weights MB": e.weight_bytes / 1e6, "decode tok/s": mean[e.name],
                     "std": sample_std(e.tokens_per_s), f"vs {reference.name}": mean[e.name] / mean[reference.name],
                     "roofline tok/s": roofline, "measured/roofline": mean[e.name] / roofline})
    print(f"{args.model}: tg{args.gen} after {args.depth} tokens, {args.threads} threads, {args.rounds} rounds; "
          f"roofline at {profile.memory_bandwidth / 1e9:.1f} GB/s measured copy bandwidth")
    print(format_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
