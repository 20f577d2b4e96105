from __future__ import annotations

import math

import pytest
import torch

from tests.eval.eval_helpers import tiny_model
from slmtrain.eval import runtime
from slmtrain.eval.quantize import quantize_model
from slmtrain.eval.runtime import (EnergyMeter, bench_device, decode_timing, kv_cache_bytes,
                                   predicted_decode_tokens_per_s, weight_bytes)
from slmtrain.hardware import DeviceProfile, get_device, measure_host_profile
from slmtrain.model.transformer import KVCache
from slmtrain.scaling.devices import Deployment

PROFILE = DeviceProfile("test device", 1e9, memory_bandwidth=1e10, peak_flops={"fp32": 1e11}, power_watts=None,
                        source="test")


def test_decode_per_token_is_slower_at_longer_context():
    # wide heads and a long cache: attention over 2000 cached positions costs ~3x the fixed overhead (quiet
    # machine); the fastest of 5 repeats on each side keeps another process' load from deciding the comparison
    model = tiny_model(d_model=512, n_head=4, n_kv_head=4, ffn_hidden=256, max_seq_len=2048)
    short = decode_timing(model, gen=8, depth=0, repeats=5, warmup=1)
    long = decode_timing(model, gen=8, depth=2000, repeats=5, warmup=1)
    assert min(long.seconds) > min(short.seconds)


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


def test_bench_device_reports_consistent_figures(model):
    result = bench_device(model, prompt=32, gen=8, repeats=2, warmup=1, profile=PROFILE)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes",
                "predicted_decode_tokens_per_s", "energy_j_per_decode_token"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["test"] == "pp32/tg8"
    assert result["predicted_decode_tokens_per_s"] == pytest.approx(
        1e10 / (weight_bytes(model) + kv_cache_bytes(model, 4)))
    assert result["decode_measured_over_predicted"] == pytest.approx(
        result["decode_tokens_per_s"] / result["predicted_decode_tokens_per_s"])
    assert result["energy_source"].startswith(("rapl", "estimate"))
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


def test_measure_host_profile_is_positive():
    profile = measure_host_profile(copy_bytes=1 << 22, matmul_size=128, repeats=2)
    assert profile.memory_bandwidth > 1e8 and profile.memory_bytes > 1e8
    assert profile.flops("fp32") > 1e6 and profile.flops("bf16") > 1e6


def test_prediction_agrees_with_the_scaling_calculator(model):
    """Same roofline as slmtrain.scaling.devices.Deployment for an fp32 model (4-byte weights and KV values)."""
    deployment = Deployment("jetson-orin-nano-8gb", precision="fp32", context=100, kv_bytes=4.0)
    assert predicted_decode_tokens_per_s(model, get_device("jetson-orin-nano-8gb"), 100) == pytest.approx(
        deployment.decode_tokens_per_s(model.config))
    result = bench_device(model, prompt=16, gen=4, repeats=1, warmup=0, profile=get_device("apple-a17-pro"))
    assert result["predicted_prefill_tokens_per_s"] is None  # no published fp32 peak for that chip
