"""What a model costs to run here: llama-bench style prefill/decode speed, TTFT, memory, energy, and the roofline
prediction with the measured/predicted ratio.

    python launch/bench_device.py model=PATH_OR_PRESET [prompt=512 gen=128 depth=0 repeats=5 warmup=1]
        [device=cpu|cuda hardware=host|PROFILE dtype=fp32|bf16|fp16 quant=none|int8|int8-dynamic|int4 threads=N]
        [format=table|json csv=results.csv plot=FILE.png depths=0,256,1024]
        [offload=experts max_resident_experts=N]   (an MoE model's HF directory: experts read from its files)
    python launch/bench_device.py model=PATH engine=llama.cpp quant=q4_0|q8_0|f16 [threads=N ...]
engine=llama.cpp exports the model to GGUF at quant and measures it in llama.cpp beside the PyTorch engine (dtype).
format=json prints exactly one JSON object on stdout. The prediction is for hardware; measured/predicted
ratios compare like with like only for host (the machine running the benchmark).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slmtrain.config import ConfigError, announce, build, check_choice, cli_main, require, split_args

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Args:
    model: str
    prompt: int = 512
    gen: int = 128
    depth: int = 0
    repeats: int = 5
    warmup: int = 1
    hardware: str = "host"  # the prediction's profile: host (measured here: memory copy + matmul) or a slmtrain.hardware profile
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    engine: Literal["pytorch", "llama.cpp"] = "pytorch"  # llama.cpp: also measure a GGUF export in llama.cpp
    quant: str = "none"  # pytorch: none|int8|int8-dynamic|int4; llama.cpp: a GGUF type (f16, q8_0, q4_0...)
    threads: int | None = None
    device: str = "cpu"  # a torch device: cpu, cuda, cuda:1, mps (pair cuda with hardware=h100-sxm...)
    format: Literal["table", "json"] = "table"
    csv: Path | None = None
    plot: Path | None = None
    depths: list[int] = field(default_factory=list)  # decode speed at these depths, for the plot
    offload: Literal["none", "experts"] = "none"  # experts: an MoE's routed experts read on demand from its files
    max_resident_experts: int | None = None  # offload=experts: experts per layer kept in memory (an LRU cache)

    def __post_init__(self) -> None:
        from slmtrain.hardware import profile_names

        check_choice("hardware", self.hardware, profile_names())
        if self.engine == "llama.cpp":
            from slmtrain.model.formats.gguf import QUANTS

            check_choice("quant", self.quant, tuple(QUANTS))
        else:
            check_choice("quant", self.quant, ("none", "int8", "int8-dynamic", "int4"))
        if self.plot and not self.depths:
            raise ConfigError("depths", "plot= needs depths=D1,D2,... (context depths to measure decode speed at)")
        require(self.threads is None or self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        require(self.repeats >= 1 and self.warmup >= 0, "repeats" if self.repeats < 1 else "warmup",
                f"need repeats >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        require(all(depth >= 0 for depth in self.depths), "depths", f"must be >= 0, got {self.depths}")
        if (self.offload == "experts") != (self.max_resident_experts is not None):
            raise ConfigError("max_resident_experts", "offload=experts and max_resident_experts=N go together")
        if self.offload == "experts" and self.quant != "none":
            raise ConfigError("quant", "offloaded experts are not quantised: use quant=none with offload=experts")


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    if "model" not in overrides:
        raise ConfigError("model", "required: model=PATH_OR_PRESET [prompt=512 gen=128 format=json ...]")
    args = announce(build(Args, overrides))
    import torch

    from slmtrain.eval.report import append_csv, format_table, plot_runtime
    from slmtrain.eval.runtime import bench_device, check_depths, check_lengths, decode_vs_context
    from slmtrain.hardware import get_profile
    from slmtrain.artifacts import LoadedModel, load_model
    from slmtrain.model.offload import load_offloaded, measure_offloaded_decode

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.max_resident_experts is not None:
        offloaded, offload_stats = load_offloaded(args.model, args.max_resident_experts, dtype)
        loaded = LoadedModel(offloaded, None, f"hf {args.model} (experts offloaded)")
    else:
        loaded = load_model(args.model, dtype)
    check_lengths(loaded.model, args.prompt, args.gen, args.depth)
    check_depths(loaded.model, args.depths)  # before the main benchmark, not after it
    try:
        model = loaded.model.to(torch.device(args.device))
    except (RuntimeError, AssertionError) as e:  # unknown or unavailable device: torch's own message, one line
        raise ConfigError("device", f"cannot use {args.device!r}: {str(e).splitlines()[0]}") from None
    if args.engine == "llama.cpp":
        from slmtrain.eval.llamacpp import bench_engines, format_engines

        engines = bench_engines(model, args.quant, args.prompt, args.gen, args.depth, args.repeats, args.warmup,
                                get_profile(args.hardware), args.threads)
        print(json.dumps({"model": loaded.source, "llama.cpp": {"quant": args.quant, **engines["llama.cpp"].to_dict()},
                          "pytorch": engines["pytorch"].to_dict()}) if args.format == "json"
              else format_engines(loaded.source, args.quant, engines))
        return 0
    if args.quant != "none":
        from slmtrain.eval.quantize import quantize_model

        model, _ = quantize_model(model, args.quant)
    profile = get_profile(args.hardware)
    runtime = bench_device(model, args.prompt, args.gen, args.depth, args.repeats, args.warmup, profile)
    figures = {"model": loaded.source, "quant": args.quant, **runtime.to_dict()}  # the JSON/CSV record
    offload = (measure_offloaded_decode(model, offload_stats, args.prompt, args.gen, profile.memory_bandwidth,
                                        profile.storage_bandwidth) if args.max_resident_experts is not None else {})
    figures.update(offload)
    if args.depths:
        rows = decode_vs_context(model, args.depths, profile=profile)
        figures["decode_vs_context"] = rows
        if args.plot:
            figures["plot"] = str(plot_runtime(runtime, rows, args.plot, f"{loaded.source} ({args.quant})"))
    if args.csv:
        append_csv(args.csv, [{k: v for k, v in figures.items() if k != "decode_vs_context"}])
    if args.format == "json":
        print(json.dumps(figures))
        return 0
    names = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes", "weight_bytes",
             "kv_cache_bytes_at_context", "energy_j_per_decode_token", "predicted_decode_tokens_per_s",
             "decode_measured_over_predicted", "prefill_measured_over_predicted")
    offload_names = ("resident_weight_bytes", "cache_hit_rate", "storage_bytes_per_token", "offload_decode_tokens_per_s",
                     "predicted_offload_decode_tokens_per_s")
    print(f"{loaded.source} {runtime.test} ({runtime.dtype}, quant {args.quant}, {runtime.threads} threads)")
    print(format_table([{"figure": k, "value": getattr(runtime, k)} for k in names]
                       + [{"figure": k, "value": offload[k]} for k in offload_names if offload]))
    print(f"energy: {runtime.energy_source}; peak memory: {runtime.peak_memory_kind}")
    return 0


main = cli_main(run, Args, doc=__doc__)
