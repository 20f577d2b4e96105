from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from tests.eval.eval_helpers import tiny_model
from slmtrain.eval import runtime
from slmtrain.eval.quantize import quantize_model
from slmtrain.eval.runtime import (EnergyMeter, bench_device, decode_timing, kv_cache_bytes,
                                   predicted_decode_tokens_per_s, weight_bytes)
from slmtrain.hardware import DeviceProfile, get_device, measure_host_profile
from slmtrain.model.transformer import KVCache

PROFILE = DeviceProfile("test device", 1e9, memory_bandwidth=1e10, peak_flops={"fp32": 1e11}, power_watts=None,
                        source="test")


@pytest.mark.parametrize("fill_context", [True, False])
def test_decode_timing_decodes_after_the_asked_context(fill_context):
    """What is timed is decoding at the asked depth: each timed token attends over depth + the tokens before it
    (counted, not timed: a timing comparison would depend on the machine's load)."""
    model = tiny_model(max_seq_len=256)
    keys_seen: list[int] = []
    attention = model.blocks[0].attn
    original = attention.forward

    def counting(x, rope, packing, cache, layer):
        out = original(x, rope, packing, cache, layer)
        keys_seen.append(cache.length + x.shape[1])  # keys attended by the last query of this pass
        return out

    attention.forward = counting
    timing = decode_timing(model, gen=4, depth=200, repeats=2, warmup=1, fill_context=fill_context)
    assert len(timing.seconds) == 2
    decoded = [n for n in keys_seen if n > 200]  # the prompt's own pass (fill_context) attends over 200
    assert decoded == [201, 202, 203, 204] * 3  # warmup + 2 repeats, each after the whole context


def test_kv_cache_bytes_match_the_allocated_cache_and_grow_linearly(model):
    for context in (1, 17, 128):
        cache = KVCache(model.config, 1, context, torch.device("cpu"), torch.float32)
        assert kv_cache_bytes(model, context) == cache.keys.nbytes + cache.values.nbytes
    assert kv_cache_bytes(model, 128) == 128 * kv_cache_bytes(model, 1)
    assert kv_cache_bytes(model.to(torch.bfloat16), 10) * 2 == kv_cache_bytes(tiny_model(), 10)


def test_weight_bytes_count_tied_weights_once_and_shrink_with_quantisation(model):
    assert weight_bytes(model) == 4 * model.num_params()  # tied head shares the embedding's storage
    bf16 = weight_bytes(tiny_model().to(torch.bfloat16))
    int8, _ = quantize_model(model.to(torch.bfloat16), "int8")
    int4, skipped = quantize_model(model.to(torch.bfloat16), "int4")
    assert weight_bytes(int4) < weight_bytes(int8) < bf16 == 2 * model.num_params()
    assert skipped == []


# The tiny preset (vocab 258, d_model 64, 2 layers, 4 heads of 16, 2 KV heads, SwiGLU 128, tied) by hand:
# embedding 258 x 64 = 16,512; per layer 64 + 128 x 64 (qkv) + 64 x 64 (out) + 64 + 256 x 64 (gate+up) + 64 x 128
# (down) = 36,992, twice = 73,984; final norm 64: 90,560 parameters, 362,240 bytes in fp32. KV cache per token:
# K and V x 2 layers x 2 KV heads x 16 x 4 bytes = 512 bytes.
TINY_WEIGHT_BYTES, TINY_KV_BYTES_PER_TOKEN = 362_240, 512
RESULT_KEYS = {  # the JSON record bench_device has always printed (format=json): kept key for key
    "test", "prompt", "gen", "depth", "repeats", "warmup", "device", "dtype", "threads", "params",
    "prefill_tokens_per_s", "prefill_tokens_per_s_std", "decode_tokens_per_s", "decode_tokens_per_s_std", "ttft_s",
    "ttft_s_std", "peak_memory_bytes", "peak_memory_kind", "weight_bytes", "weight_bytes_read_per_token",
    "kv_cache_bytes_per_token", "kv_cache_bytes_at_context", "energy_j_per_decode_token", "energy_source",
    "device_profile", "predicted_prefill_tokens_per_s", "predicted_decode_tokens_per_s", "predicted_ttft_s",
    "prefill_measured_over_predicted", "decode_measured_over_predicted"}


def test_bench_device_reports_consistent_figures(model):
    result = bench_device(model, prompt=32, gen=8, repeats=2, warmup=1, profile=PROFILE)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes",
                "predicted_decode_tokens_per_s", "energy_j_per_decode_token"):
        assert math.isfinite(getattr(result, key)) and getattr(result, key) > 0, key
    assert result.test == "pp32/tg8" and result.engine == "pytorch"
    assert (result.params, result.weight_bytes) == (90_560, TINY_WEIGHT_BYTES)
    assert result.kv_cache_bytes_at_context == 8 * TINY_KV_BYTES_PER_TOKEN
    # decode reads every weight and the cache at the mean context (0 + 8 / 2 = 4 positions) once per token
    assert result.predicted_decode_tokens_per_s == pytest.approx(1e10 / (362_240 + 4 * 512))
    assert result.energy_source.startswith(("rapl", "estimate"))
    record = result.to_dict()
    assert RESULT_KEYS <= record.keys() and record["device_profile"]["memory_bandwidth"] == 1e10
    json.dumps(record)  # the CLI prints it as is
    with pytest.raises(Exception, match="max_seq_len"):
        bench_device(model, prompt=512, gen=8, profile=PROFILE)


def test_energy_meter_reads_rapl_counters_across_a_wraparound(tmp_path, monkeypatch):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    monkeypatch.setattr(runtime, "RAPL_PACKAGE_ZONES", str(tmp_path / "intel-rapl:[0-9]*"))
    meter = EnergyMeter()
    meter.start()
    (zone / "energy_uj").write_text("100000\n")  # wrapped: 100000 + 1000000 - 900000 = 0.2 J
    meter.stop()
    assert meter.joules == pytest.approx(0.2) and meter.source.startswith("rapl")
    monkeypatch.setattr(runtime, "RAPL_PACKAGE_ZONES", str(tmp_path / "none*"))
    estimate = EnergyMeter(power_w=10.0)
    estimate.start()
    estimate.stop()
    assert estimate.source.startswith("estimate") and estimate.joules >= 0


def test_host_profile_agrees_with_an_independent_measurement():
    """Bandwidth (numpy copy) and fp32 matmul peak (torch.mm) of the host profile against the same figures taken
    another way here: torch's copy_ and numpy's (OpenBLAS) matmul, on one thread each, best of several runs."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            profile = measure_host_profile(copy_bytes=1 << 26, matmul_size=256, repeats=3)
            source, target = torch.ones(1 << 23, dtype=torch.float64), torch.empty(1 << 23, dtype=torch.float64)
            copy_s = min(_seconds(lambda: target.copy_(source)) for _ in range(5))
            a, b = (np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32) for _ in range(2))
            matmul_s = min(_seconds(lambda: [a @ b for _ in range(20)]) / 20 for _ in range(5))
    finally:
        torch.set_num_threads(threads)
    bandwidth = 2 * source.nbytes / copy_s  # each byte read once and written once
    flops = 2 * 256**3 / matmul_s
    assert 1 / 4 < profile.memory_bandwidth / bandwidth < 4, (profile.memory_bandwidth, bandwidth)
    assert 1 / 4 < profile.flops("fp32") / flops < 4, (profile.flops("fp32"), flops)


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def test_decode_roofline_on_a_hand_computed_case(model):
    """The Jetson Orin Nano's published 68 GB/s over the tiny fp32 model's bytes at a 100-token context:
    68e9 / (362,240 + 100 x 512) = 164,474 tokens/s."""
    assert predicted_decode_tokens_per_s(model, get_device("jetson-orin-nano-8gb"), 100) == pytest.approx(164_474,
                                                                                                         rel=1e-5)
    result = bench_device(model, prompt=16, gen=4, repeats=1, warmup=0, profile=get_device("apple-a17-pro"))
    assert result.predicted_prefill_tokens_per_s is None  # no published fp32 peak for that chip
