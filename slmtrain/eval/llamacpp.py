"""llama.cpp as the runtime engine (through llama-cpp-python): open a GGUF file, decode greedily, and measure it as
:mod:`slmtrain.eval.runtime` measures the PyTorch engine, beside it, with the same roofline prediction.

Speed follows llama-bench: ``pp{prompt}`` is one forward pass over the prompt, ``tg{gen}`` one token per pass after
``depth`` tokens in the KV cache; token ids are random. Memory is what llama.cpp holds for the model: its weights
(``llama_model_size``) and its context state, KV cache included (``llama_state_get_size``). The prediction is the
decode bandwidth roofline over the GGUF's own weight bytes and llama.cpp's f16 KV cache, and the compute roofline at
the device's fp32 peak for prefill (llama.cpp's CPU kernels accumulate in fp32 whatever the weight type).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmtrain.config import UserError
from slmtrain.eval.runtime import (
    RuntimeResult, Timing, bench_device, bench_name, roofline_decode_tokens_per_s, roofline_prefill_tokens_per_s,
    sample_std, time_runs,
)
from slmtrain.hardware import DeviceProfile, measure_host_profile
from slmtrain.model.config import ModelConfig
from slmtrain.model.formats.gguf import export_gguf
from slmtrain.model.transformer import Transformer

KV_CACHE_ELEMENT_BYTES = 2  # llama.cpp's default K and V cache type is f16
CPU = torch.device("cpu")


def open_gguf(path: str | Path, threads: int | None = None, context: int = 512, all_logits: bool = False) -> Any:
    """A ``llama_cpp.Llama`` on ``path`` with ``threads`` threads (default: torch's, as the PyTorch engine uses)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("the llama.cpp engine needs llama-cpp-python: pip install -e '.[dev]' (its first build from "
                        "source takes about 20 minutes on 2 cores)") from None
    if not Path(path).is_file():
        raise UserError(f"GGUF file not found: {path}")
    threads = threads or torch.get_num_threads()
    try:
        return Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, n_threads=threads,
                     n_threads_batch=threads, logits_all=all_logits, verbose=False)
    except ValueError as e:  # llama.cpp logs why to stderr, and the binding raises "Failed to load model"
        raise UserError(f"{path}: llama.cpp cannot load it ({e})") from None


def greedy(llm: Any, ids: list[int], new_tokens: int) -> list[int]:
    """``new_tokens`` tokens continuing ``ids``, argmax at every step."""
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == new_tokens:
            break
    return out


def prompt_logits(llm: Any, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of every prompt position (``llm`` opened with ``all_logits=True``)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def model_bytes(llm: Any) -> int:
    """Bytes of the weights llama.cpp holds for the model."""
    import llama_cpp

    return int(llama_cpp.llama_model_size(llm.model))


def decode_timing(llm: Any, vocab_size: int, gen: int, depth: int = 0, repeats: int = 5, warmup: int = 1) -> Timing:
    """Seconds to decode ``gen`` tokens one at a time after ``depth`` tokens of context (filled untimed)."""
    ids = np.random.default_rng(1).integers(0, vocab_size, depth + 1).tolist()
    seconds = []
    for index in range(warmup + repeats):
        llm.reset()
        llm.eval(ids[:depth])
        step = time_runs(lambda: [llm.eval(ids[depth:]) for _ in range(gen)], 1, 0, CPU)
        if index >= warmup:
            seconds += step.seconds
    return Timing(seconds)


def bench_llama_cpp(path: str | Path, config: ModelConfig, prompt: int = 512, gen: int = 128, depth: int = 0,
                    repeats: int = 5, warmup: int = 1, profile: DeviceProfile | None = None,
                    threads: int | None = None) -> RuntimeResult:
    """pp{prompt} / tg{gen} at ``depth``, TTFT and memory of a GGUF file in llama.cpp, with the roofline prediction
    for ``profile`` (default: this machine, measured) and the measured/predicted ratios."""
    profile = profile or measure_host_profile()
    llm = open_gguf(path, threads, context=max(prompt, depth + gen))
    prompt_ids = np.random.default_rng(0).integers(0, config.vocab_size, prompt).tolist()

    def prefill() -> None:
        llm.reset()
        llm.eval(prompt_ids)

    def first_token() -> None:
        prefill()
        llm.sample(temp=0.0)

    prefill_timing = time_runs(prefill, repeats, warmup, CPU)
    ttft = time_runs(first_token, repeats, warmup, CPU)
    decode = decode_timing(llm, config.vocab_size, gen, depth, repeats, warmup)
    import llama_cpp

    weight_bytes = model_bytes(llm)
    state_bytes = int(llama_cpp.llama_state_get_size(llm.ctx))
    llm.close()
    kv_per_token = config.kv_cache_bytes_per_token(KV_CACHE_ELEMENT_BYTES)
    prefill_tps = [prompt / s for s in prefill_timing.seconds]
    decode_tps = [gen / s for s in decode.seconds]
    return RuntimeResult(
        engine="llama.cpp", test=bench_name(prompt, gen, depth), prompt=prompt, gen=gen, depth=depth, repeats=repeats,
        warmup=warmup, device="cpu", dtype=None, threads=threads or torch.get_num_threads(), params=config.params(),
        prefill_tokens_per_s=statistics.fmean(prefill_tps), prefill_tokens_per_s_std=sample_std(prefill_tps),
        decode_tokens_per_s=statistics.fmean(decode_tps), decode_tokens_per_s_std=sample_std(decode_tps),
        ttft_s=ttft.mean_s, ttft_s_std=ttft.std_s, peak_memory_bytes=weight_bytes + state_bytes,
        peak_memory_kind="llama_model_size + llama_state_get_size", weight_bytes=weight_bytes,
        weight_bytes_read_per_token=weight_bytes, kv_cache_bytes_per_token=kv_per_token,
        kv_cache_bytes_at_context=kv_per_token * (depth + gen), device_profile=profile,
        predicted_prefill_tokens_per_s=roofline_prefill_tokens_per_s(profile, config, "fp32", prompt),
        predicted_decode_tokens_per_s=roofline_decode_tokens_per_s(profile, weight_bytes,
                                                                   kv_per_token * (depth + gen // 2)))


def bench_engines(model: Transformer, quant: str = "f16", prompt: int = 512, gen: int = 128, depth: int = 0,
                  repeats: int = 5, warmup: int = 1, profile: DeviceProfile | None = None,
                  threads: int | None = None) -> dict[str, RuntimeResult]:
    """The same model in llama.cpp (exported to GGUF at ``quant``) and in slmtrain's PyTorch engine (as given),
    on the same threads and device profile, by engine name."""
    profile = profile or measure_host_profile()
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model-{quant}.gguf"
        export_gguf(model, path, quant)
        llama = bench_llama_cpp(path, model.config, prompt, gen, depth, repeats, warmup, profile, threads)
    return {"llama.cpp": llama, "pytorch": bench_device(model, prompt, gen, depth, repeats, warmup, profile)}


ENGINE_FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes", "weight_bytes",
                  "kv_cache_bytes_at_context", "predicted_prefill_tokens_per_s", "predicted_decode_tokens_per_s",
                  "prefill_measured_over_predicted", "decode_measured_over_predicted")


def format_engines(source: str, quant: str, engines: dict[str, RuntimeResult]) -> str:
    """One column per engine, one row per figure; ``quant``: the GGUF type llama.cpp ran."""
    from slmtrain.eval.report import format_table

    llama, pytorch = engines["llama.cpp"], engines["pytorch"]
    columns = {f"llama.cpp {quant}": llama, f"pytorch {pytorch.dtype}": pytorch}
    rows = [{"figure": figure, **{name: getattr(result, figure) for name, result in columns.items()}}
            for figure in ENGINE_FIGURES]
    return (f"{source} {llama.test} on {llama.threads} threads\n{format_table(rows)}\n"
            f"memory: llama.cpp {llama.peak_memory_kind}; pytorch {pytorch.peak_memory_kind}")
