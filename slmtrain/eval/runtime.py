"""What a model costs to run on this machine: speed, memory, energy, and the same figures predicted from a device
profile (:mod:`slmtrain.hardware`: a named device, or this host measured), with the
measured/predicted ratio.

Speed follows llama-bench: ``pp{prompt}`` is prefill throughput (the whole prompt in one forward pass) and
``tg{gen}`` is decode throughput (one token per forward pass, after ``depth`` tokens already in the KV cache),
each the mean and standard deviation over ``repeats`` timed runs after ``warmup`` untimed ones. Token ids are
random: speed does not depend on the text. Time to first token is a fresh cache, the prompt's forward pass and the
choice of the first token.

The prediction is the roofline of a single stream: decoding reads every weight it uses (an MoE layer's top-k
experts, not all of them) and the KV cache once per token, so it is bound by memory bandwidth (tokens/s = bandwidth
/ (weight bytes read + KV bytes at that context)); prefill is bound by compute (tokens/s = peak FLOP/s / FLOPs per
token).
"""

from __future__ import annotations

import glob
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from slmtrain.config import UserError
from slmtrain.model.config import ModelConfig
from slmtrain.model.transformer import KVCache, Transformer
from slmtrain.hardware import DeviceProfile, measure_host_profile, peak_memory

if TYPE_CHECKING:
    from slmtrain.scaling.codesign import Job as ShapeJob

RAPL_PACKAGE_ZONES = "/sys/class/powercap/intel-rapl:[0-9]*"  # package zones only (subzones carry a second ':')
ASSUMED_CPU_POWER_W = 15.0  # energy estimate without RAPL: a laptop-class CPU package under full load
PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    seconds: list[float]  # one per timed run

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.seconds)

    @property
    def std_s(self) -> float:
        return statistics.stdev(self.seconds) if len(self.seconds) > 1 else 0.0


def time_runs(run: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> Timing:
    """``run`` times itself by returning nothing: set-up that must not count happens before ``run`` is called."""
    if repeats < 1 or warmup < 0:
        raise UserError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats} warmup={warmup}")
    seconds = []
    for index in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_ids(model: Transformer, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
    return ids.to(next(model.parameters()).device)


def _new_cache(model: Transformer, length: int) -> KVCache:
    parameter = next(model.parameters())
    return KVCache(model.config, 1, length, parameter.device, _compute_dtype(model))


def _compute_dtype(model: Transformer) -> torch.dtype:
    return model.embed.weight.dtype


@torch.no_grad()
def prefill_timing(model: Transformer, prompt: int, repeats: int = 5, warmup: int = 1) -> Timing:
    ids, cache = _random_ids(model, prompt), _new_cache(model, prompt)

    def run() -> None:
        cache.length = 0
        model(ids, cache=cache)

    return time_runs(run, repeats, warmup, ids.device)


@torch.no_grad()
def decode_timing(model: Transformer, gen: int, depth: int = 0, repeats: int = 5, warmup: int = 1,
                  meter: EnergyMeter | None = None, fill_context: bool = True) -> Timing:
    """Seconds to decode ``gen`` tokens one at a time after ``depth`` tokens of context (filled untimed); ``meter``
    accumulates the energy of the timed runs only. ``fill_context=False`` skips the prompt's forward pass and marks
    ``depth`` positions of the (zeroed) cache as filled: attention costs the same whatever the cached values, and a
    long context then costs no prefill per repeat."""
    context, step = _random_ids(model, depth), _random_ids(model, 1, seed=1)
    cache = _new_cache(model, depth + gen)
    seconds = []
    for index in range(warmup + repeats):
        cache.length = 0 if fill_context else depth
        if depth and fill_context:
            model(context, cache=cache)
        timed = index >= warmup
        _sync(step.device)
        if timed and meter is not None:
            meter.start()
        start = time.perf_counter()
        for _ in range(gen):
            model(step, cache=cache)
        _sync(step.device)
        if timed:
            seconds.append(time.perf_counter() - start)
            if meter is not None:
                meter.stop()
    return Timing(seconds)


@torch.no_grad()
def ttft_timing(model: Transformer, prompt: int, repeats: int = 5, warmup: int = 1) -> Timing:
    ids = _random_ids(model, prompt)
    return time_runs(lambda: model(ids, cache=_new_cache(model, prompt + 1))[:, -1].argmax(-1), repeats, warmup,
                     ids.device)


# ---------------------------------------------------------------------------------------------------- memory
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every stored tensor (parameters and persistent buffers, e.g. packed quantised weights, and the
    inner tensors of torchao's quantised tensor subclasses); tied weights are counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in (plain for value in model.state_dict().values() for plain in _plain_tensors(value)):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def _plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """A tensor subclass that wraps others (``__tensor_flatten__``, e.g. torchao's Int8Tensor) is its inner tensors."""
    if not hasattr(tensor, "__tensor_flatten__"):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [plain for name in names for plain in _plain_tensors(getattr(tensor, name))]


def reset_peak_memory() -> bool:
    """Restart the process's peak-RSS count from its current RSS (Linux: ``/proc/self/clear_refs``), so that
    hardware.peak_memory measures what follows; False where the kernel refuses (the peak then covers the process's
    whole life)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def weight_bytes_read_per_token(model: Transformer) -> float:
    """``weight_bytes`` less the routed experts a decoded token skips: of a MoE layer's resident experts, a token
    reads top_k of them."""
    skipped = sum((1 - layer.top_k / layer.num_experts) * weight_bytes(layer.experts) for layer in model.moe_layers())
    return weight_bytes(model) - skipped


def kv_cache_bytes(model: Transformer, context: int) -> int:
    """Bytes of the KV cache holding ``context`` positions, as the model allocates it."""
    element = torch.empty(0, dtype=_compute_dtype(model)).element_size()
    return int(model.config.kv_cache_bytes_per_token(element) * context)


# ---------------------------------------------------------------------------------------------------- energy
class EnergyMeter:
    """Joules accumulated over ``start()``/``stop()`` intervals from RAPL package counters when readable (Linux,
    Intel/AMD, often root-only), else ``power_w`` x elapsed time, labelled as an estimate in ``source``."""

    def __init__(self, power_w: float | None = None):
        self.zones = [Path(z) for z in sorted(glob.glob(RAPL_PACKAGE_ZONES)) if _readable_counter(Path(z))]
        self.power_w = power_w or ASSUMED_CPU_POWER_W
        self.joules = 0.0
        self.source = (f"rapl ({len(self.zones)} package zone(s))" if self.zones
                       else f"estimate ({self.power_w:g} W x time; RAPL not readable)")

    def start(self) -> None:
        self.begin = [_counter(z) for z in self.zones]
        self.started = time.perf_counter()

    def stop(self) -> None:
        elapsed = time.perf_counter() - self.started
        if not self.zones:
            self.joules += self.power_w * elapsed
        for zone, before in zip(self.zones, self.begin):
            after = _counter(zone)
            if after < before:  # the counter wrapped around
                after += int((zone / "max_energy_range_uj").read_text())
            self.joules += (after - before) / 1e6


def _readable_counter(zone: Path) -> bool:
    try:
        _counter(zone)
        return True
    except (OSError, ValueError):
        return False


def _counter(zone: Path) -> int:
    return int((zone / "energy_uj").read_text())


# ---------------------------------------------------------------------------------------------------- together
def roofline_decode_tokens_per_s(profile: DeviceProfile, weight_bytes: int, kv_bytes: int) -> float:
    """Bandwidth bound: every weight and the KV cache are read once per decoded token."""
    return profile.memory_bandwidth / (weight_bytes + kv_bytes)


def roofline_prefill_tokens_per_s(profile: DeviceProfile, config: ModelConfig, precision: str | None,
                                  prompt: int) -> float | None:
    """Compute bound: the mean token of a prompt attends to half of it. None when the device publishes no peak at
    ``precision``."""
    if precision not in profile.peak_flops:
        return None
    return profile.peak_flops[precision] / config.inference_flops_per_token(prompt // 2)


def predicted_decode_tokens_per_s(model: Transformer, profile: DeviceProfile, context: int) -> float:
    """The roofline of slmtrain.scaling.devices.Deployment, over the bytes this model object really holds."""
    return roofline_decode_tokens_per_s(profile, weight_bytes_read_per_token(model), kv_cache_bytes(model, context))


def predicted_prefill_tokens_per_s(model: Transformer, profile: DeviceProfile, prompt: int) -> float | None:
    """The compute roofline at the model's compute precision."""
    return roofline_prefill_tokens_per_s(profile, model.config, PRECISIONS.get(_compute_dtype(model)), prompt)


def check_lengths(model: Transformer, prompt: int, gen: int, depth: int) -> None:
    """The benchmark's prompt and decode positions fit the model's context (checked before anything is timed)."""
    if prompt < 1 or gen < 1 or depth < 0:
        raise UserError(f"need prompt >= 1, gen >= 1, depth >= 0; got prompt={prompt} gen={gen} depth={depth}")
    limit = model.config.max_seq_len
    if max(prompt, depth + gen) > limit:
        raise UserError(f"prompt={prompt} or depth+gen={depth + gen} exceeds the model's max_seq_len={limit}")


@dataclass(frozen=True)
class RuntimeResult:
    """One runtime measurement of one model on one engine (``pytorch``: :func:`bench_device`; ``llama.cpp``:
    :func:`slmtrain.eval.llamacpp.bench_llama_cpp`), with the roofline prediction for ``device_profile``. Read it by
    attribute; :meth:`to_dict` is the JSON/CSV record (the derived figures included). Measured/predicted ratios are
    only meaningful when the profile is the machine the benchmark ran on."""

    engine: str  # pytorch | llama.cpp
    test: str  # llama-bench's name: pp{prompt}/tg{gen}[@d{depth}]
    prompt: int
    gen: int
    depth: int
    repeats: int
    warmup: int
    device: str  # the torch device measured on (llama.cpp: cpu)
    dtype: str | None  # compute dtype (pytorch); None for llama.cpp, whose weight type is the GGUF's quant
    threads: int
    params: int
    prefill_tokens_per_s: float
    prefill_tokens_per_s_std: float
    decode_tokens_per_s: float
    decode_tokens_per_s_std: float
    ttft_s: float
    ttft_s_std: float
    peak_memory_bytes: int
    peak_memory_kind: str  # what peak_memory_bytes measures
    weight_bytes: int
    weight_bytes_read_per_token: float  # an MoE token reads its top-k experts only
    kv_cache_bytes_per_token: int
    kv_cache_bytes_at_context: int
    device_profile: DeviceProfile  # the hardware= profile the prediction is for
    predicted_prefill_tokens_per_s: float | None  # None: the profile publishes no peak at the compute precision
    predicted_decode_tokens_per_s: float
    energy_j_per_decode_token: float | None = None  # pytorch engine: RAPL where readable, else an estimate
    energy_source: str | None = None

    @property
    def predicted_ttft_s(self) -> float | None:
        return self.prompt / self.predicted_prefill_tokens_per_s if self.predicted_prefill_tokens_per_s else None

    @property
    def prefill_measured_over_predicted(self) -> float | None:
        return (self.prefill_tokens_per_s / self.predicted_prefill_tokens_per_s if self.predicted_prefill_tokens_per_s
                else None)

    @property
    def decode_measured_over_predicted(self) -> float:
        return self.decode_tokens_per_s / self.predicted_decode_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "predicted_ttft_s": self.predicted_ttft_s,
                "prefill_measured_over_predicted": self.prefill_measured_over_predicted,
                "decode_measured_over_predicted": self.decode_measured_over_predicted}


def bench_name(prompt: int, gen: int, depth: int) -> str:
    """llama-bench's test name."""
    return f"pp{prompt}/tg{gen}" + (f"@d{depth}" if depth else "")


def bench_device(model: Transformer, prompt: int = 512, gen: int = 128, depth: int = 0, repeats: int = 5,
                 warmup: int = 1, profile: DeviceProfile | None = None, fill_context: bool = True) -> RuntimeResult:
    """pp{prompt} / tg{gen} at ``depth``, TTFT, memory, energy per decoded token, and the roofline prediction for
    ``profile`` (default: this machine, measured). ``fill_context=False``: decode after ``depth`` zeroed cache
    positions instead of a prefilled context (see :func:`decode_timing`)."""
    check_lengths(model, prompt, gen, depth)
    model = model.eval()
    device = next(model.parameters()).device
    profile = profile or measure_host_profile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill = prefill_timing(model, prompt, repeats, warmup)
    ttft = ttft_timing(model, prompt, repeats, warmup)
    meter = EnergyMeter()  # energy is measured (or estimated) here, whatever device the prediction is for
    decode = decode_timing(model, gen, depth, repeats, warmup, meter, fill_context)
    peak, peak_kind = peak_memory(device)
    prefill_tps = [prompt / s for s in prefill.seconds]
    decode_tps = [gen / s for s in decode.seconds]
    return RuntimeResult(
        engine="pytorch", test=bench_name(prompt, gen, depth), prompt=prompt, gen=gen, depth=depth, repeats=repeats,
        warmup=warmup, device=str(device), dtype=str(_compute_dtype(model)).removeprefix("torch."),
        threads=torch.get_num_threads(), params=model.num_params(),
        prefill_tokens_per_s=statistics.fmean(prefill_tps), prefill_tokens_per_s_std=sample_std(prefill_tps),
        decode_tokens_per_s=statistics.fmean(decode_tps), decode_tokens_per_s_std=sample_std(decode_tps),
        ttft_s=ttft.mean_s, ttft_s_std=ttft.std_s, peak_memory_bytes=peak, peak_memory_kind=peak_kind,
        weight_bytes=weight_bytes(model), weight_bytes_read_per_token=weight_bytes_read_per_token(model),
        kv_cache_bytes_per_token=kv_cache_bytes(model, 1), kv_cache_bytes_at_context=kv_cache_bytes(model, depth + gen),
        device_profile=profile, predicted_prefill_tokens_per_s=predicted_prefill_tokens_per_s(model, profile, prompt),
        predicted_decode_tokens_per_s=predicted_decode_tokens_per_s(model, profile, depth + gen // 2),
        energy_j_per_decode_token=meter.joules / (gen * repeats), energy_source=meter.source)


SHAPE_PRELOAD = ("torchao.quantization", "slmtrain.eval.quantize")  # what bench_shape imports: load it once


def bench_shape(job: ShapeJob) -> RuntimeResult:
    """One measurement of one shape for co-design (:mod:`slmtrain.scaling.codesign` takes this function from the
    command): random weights at the job's precision, one timed run after one warm-up, decode with ``context - gen``
    (zeroed) cached positions; meant for a fresh process, whose peak memory is then the candidate's own."""
    from slmtrain.config import build
    from slmtrain.eval.quantize import quantize_model

    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    model = Transformer(build(ModelConfig, job.config)).to(torch.bfloat16).eval()
    if job.precision != "bf16":
        model, _ = quantize_model(model, job.precision)  # the bf16 model is dropped: only this one is kept
    reset_peak_memory()  # the peak is the quantised model's run, not the quantisation's transient copy
    return bench_device(model, job.prompt, job.gen, job.context - job.gen, repeats=1, warmup=1, profile=job.profile,
                        fill_context=False)


def sample_std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


DECODE_VS_CONTEXT_GEN = 16  # tokens decoded at each depth of decode_vs_context


def check_depths(model: Transformer, depths: list[int], gen: int = DECODE_VS_CONTEXT_GEN) -> None:
    """Each depth plus the tokens decoded there fits the model's context."""
    for depth in depths:
        if depth < 0 or depth + gen > model.config.max_seq_len:
            raise UserError(f"depth {depth} + gen {gen} exceeds max_seq_len={model.config.max_seq_len}"
                            if depth >= 0 else f"depth {depth} is negative")


def decode_vs_context(model: Transformer, depths: list[int], gen: int = DECODE_VS_CONTEXT_GEN, repeats: int = 3,
                      warmup: int = 1,
                      profile: DeviceProfile | None = None) -> list[dict[str, float]]:
    """Decode tokens/s (and the prediction, given a profile) and KV-cache bytes at each context depth: how
    generation slows as the cache grows."""
    check_depths(model, depths, gen)  # every depth before the first is timed
    rows = []
    for depth in depths:
        timing = decode_timing(model, gen, depth, repeats, warmup)
        row = {"depth": depth, "decode_tokens_per_s": gen / timing.mean_s,
               "kv_cache_bytes": kv_cache_bytes(model, depth + gen)}
        if profile is not None:
            row["predicted_decode_tokens_per_s"] = predicted_decode_tokens_per_s(model, profile, depth + gen // 2)
        rows.append(row)
    return rows
