"""slmtrain.hardware: the profiles against their data sheets' own arithmetic, the lookups, and the host's measured
figures against measurements made here with numpy and torch."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from slmtrain.config import ConfigError
from slmtrain.hardware import (DEVICES, cuda_peak_flops, get_device, get_profile, gpu_bf16_peaks,
                               measured_matmul_flops, profile_names)


def test_profiles_hold_their_data_sheets_derivations():
    nano = DEVICES["jetson-orin-nano-8gb"]
    assert nano.peak_flops["fp32"] == 1024 * 2 * 625e6  # CUDA cores x FMA x clock, as its source says
    assert nano.peak_flops["int8"] == 40e12 / 2 and nano.peak_flops["fp16"] == nano.peak_flops["int8"] / 2
    assert DEVICES["snapdragon-8-gen-3"].memory_bandwidth == 9.6e9 * 64 / 8  # 9.6 GT/s x 64 bit
    assert DEVICES["apple-a17-pro"].memory_bandwidth == 6.4e9 * 64 / 8  # LPDDR5-6400 x 64 bit
    for profile in DEVICES.values():
        assert profile.memory_bytes > 0 and profile.memory_bandwidth > 0 and profile.source
        assert all(peak > 0 for peak in profile.peak_flops.values())


def test_lookups_name_the_valid_choices():
    assert get_device("h100-sxm").flops("bf16") == 989.4e12
    with pytest.raises(ConfigError, match="hardware: unknown device 'tpu'; valid choices: apple-a17-pro"):
        get_device("tpu")
    with pytest.raises(ConfigError, match="no published peak for 'fp8'"):
        get_device("jetson-orin-nano-8gb").flops("fp8")
    assert profile_names()[0] == "host" and set(profile_names()[1:]) == set(DEVICES)


def test_cuda_names_find_their_data_sheet_peak():
    assert cuda_peak_flops("NVIDIA H100 80GB HBM3") == (989.4e12, "H100 bf16 data sheet")
    assert cuda_peak_flops("NVIDIA A100-SXM4-40GB")[0] == 312e12
    peak, why = cuda_peak_flops("Some Future GPU")
    assert peak != peak and "unknown GPU" in why  # NaN, said
    assert gpu_bf16_peaks()["H200"] == DEVICES["h200"].peak_flops["bf16"]


def test_the_hosts_matmul_peak_is_what_a_plain_matmul_achieves_here():
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = measured_matmul_flops(torch.float32, size=256, seconds=0.2)
    finally:
        torch.set_num_threads(threads)
    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(1):  # numpy's BLAS on one thread too
        for _ in range(20):
            started = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - started)
    reference = 2 * 256**3 / best
    assert 0.25 < measured / reference < 4, (measured, reference)  # the same order: neither inflated nor idle
    host = get_profile("host")
    assert host.name == "host" and host.memory_bandwidth > 0 and host.peak_flops["fp32"] > 0
