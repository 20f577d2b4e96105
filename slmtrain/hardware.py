"""Hardware facts in one place: device profiles (memory, bandwidth, dense peaks per precision, power, with their
sources), the GPU a training run is on, and measurements of this host (matmul peak, memory bandwidth, peak memory).

Figures are vendors' published specifications; where a vendor publishes only a sparse or marketing number, the
dense figure derived from it is marked in ``source``. ``power_watts`` is None where no figure is published.
Everything above (scaling's deployment planner, training's MFU, eval's runtime bench) reads them from here.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmtrain.config import ConfigError

if TYPE_CHECKING:
    import torch

GB = 1e9


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    memory_bytes: float
    memory_bandwidth: float  # bytes/s
    peak_flops: dict[str, float]  # dense FLOP/s (or OP/s for integer types) per precision
    power_watts: float | None
    source: str
    cuda_names: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that are this device
    storage_bandwidth: float | None = None  # bytes/s read from where offloaded weights live (flash, or host RAM)
    storage_source: str = ""  # where storage_bandwidth comes from

    def flops(self, precision: str) -> float:
        if precision not in self.peak_flops:
            raise ConfigError("precision", f"device {self.name} has no published peak for {precision!r}; "
                                           f"valid choices: {', '.join(self.peak_flops)}")
        return self.peak_flops[precision]


DEVICES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("jetson-agx-orin-64gb", 64 * GB, 204.8 * GB,
                  {"fp32": 5.3e12, "fp16": 85e12, "bf16": 85e12, "int8": 170e12}, 60.0,
                  "NVIDIA Jetson AGX Orin Series data sheet (2023): 64 GB LPDDR5 204.8 GB/s, 275 sparse INT8 TOPS "
                  "(GPU 170 + DLA 105), GPU FP32 5.3 TFLOPS, 15-60 W; GPU dense INT8 = 170/2, FP16 = INT8/2 derived",
                  storage_bandwidth=7 * GB,
                  storage_source="Jetson AGX Orin Developer Kit: M.2 Key M slot, PCIe Gen4 x4 NVMe; 7 GB/s is a "
                                 "typical Gen4 x4 SSD's sequential read (derived, not an NVIDIA figure)"),
    DeviceProfile("jetson-orin-nano-8gb", 8 * GB, 68 * GB,
                  {"fp32": 1.28e12, "fp16": 10e12, "bf16": 10e12, "int8": 20e12}, 15.0,
                  "NVIDIA Jetson Orin Nano data sheet (2023): 8 GB LPDDR5 68 GB/s, 40 sparse INT8 TOPS, 7-15 W; "
                  "dense INT8 = 40/2 and FP16 = INT8/2 derived; FP32 = 1024 CUDA cores x 2 x 625 MHz",
                  storage_bandwidth=3.5 * GB,
                  storage_source="Jetson Orin Nano Developer Kit: M.2 Key M slot, PCIe Gen3 x4 NVMe; 3.5 GB/s is a "
                                 "typical Gen3 x4 SSD's sequential read (derived, not an NVIDIA figure)"),
    DeviceProfile("apple-m3-max-128gb", 128 * GB, 400 * GB,
                  {"fp32": 14.2e12, "fp16": 14.2e12, "int8": 18e12}, None,
                  "Apple M3 Max press release (Oct 2023): up to 128 GB unified memory, 400 GB/s, 16-core Neural "
                  "Engine 18 TOPS; GPU FP32 derived: 40 cores x 128 ALUs x 2 x ~1.4 GHz; no official power figure",
                  storage_bandwidth=6 * GB,
                  storage_source="MacBook Pro (M3 Max) internal SSD, ~6 GB/s sequential read in third-party "
                                 "benchmarks (Apple publishes no figure; approximate)"),
    DeviceProfile("apple-a17-pro", 8 * GB, 51.2 * GB,
                  {"fp16": 2.1e12, "int8": 35e12}, None,
                  "Apple iPhone 15 Pro (Sept 2023): Neural Engine 35 TOPS (Apple); 8 GB LPDDR5-6400 x 64 bit = "
                  "51.2 GB/s (teardown figures); GPU FP16 ~2.1 TFLOPS (third-party estimate); no official power",
                  storage_bandwidth=1.5 * GB,
                  storage_source="iPhone 15 Pro NVMe flash, ~1.5 GB/s sequential read in third-party benchmarks "
                                 "(Apple publishes no figure; approximate)"),
    DeviceProfile("snapdragon-8-gen-3", 12 * GB, 76.8 * GB,
                  {"fp16": 17e12, "int8": 34e12}, None,
                  "Qualcomm Snapdragon 8 Gen 3 product brief (2023): LPDDR5X up to 4800 MHz (9.6 GT/s x 64 bit = "
                  "76.8 GB/s), up to 24 GB (12 GB typical flagship phone); Hexagon NPU ~34 dense INT8 TOPS and "
                  "FP16 half of it are third-party estimates (Qualcomm publishes no TOPS figure); no official power",
                  storage_bandwidth=4.2 * GB,
                  storage_source="UFS 4.0 flash of Snapdragon 8 Gen 3 phones: 4,200 MB/s sequential read (Samsung's "
                                 "UFS 4.0 announcement, 2022)"),
    DeviceProfile("h100-sxm", 80 * GB, 3.35e12,
                  {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12,
                   "int8": 1978.9e12}, 700.0,
                  "NVIDIA H100 Tensor Core GPU data sheet (SXM5): 80 GB HBM3 3.35 TB/s, dense BF16 989.4 TFLOPS "
                  "(1979 with sparsity), FP8 1979, up to 700 W", ("H100",),
                  storage_bandwidth=64 * GB,
                  storage_source="experts offloaded to host memory: PCIe Gen5 x16, 128 GB/s both directions (H100 "
                                 "data sheet), 64 GB/s host to device"),
    DeviceProfile("h200", 141 * GB, 4.8e12,
                  {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12,
                   "int8": 1978.9e12}, 700.0,
                  "NVIDIA H200 Tensor Core GPU data sheet (SXM): 141 GB HBM3e 4.8 TB/s, same compute as H100 SXM "
                  "(dense BF16 989.4 TFLOPS), up to 700 W", ("H200",),
                  storage_bandwidth=64 * GB,
                  storage_source="experts offloaded to host memory: PCIe Gen5 x16, 128 GB/s both directions (H200 "
                                 "data sheet), 64 GB/s host to device"),
)}


# Data-sheet dense bf16 peaks of training GPUs that have no full profile above (sparsity excluded).
TRAINING_GPU_BF16_PEAKS = {"A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12,
                           "V100": 125e12}


def device_names() -> list[str]:
    return sorted(DEVICES)


def get_device(name: str) -> DeviceProfile:
    if name not in DEVICES:
        raise ConfigError("hardware", f"unknown device {name!r}; valid choices: {', '.join(device_names())}")
    return DEVICES[name]


def gpu_bf16_peaks() -> dict[str, float]:
    """GPU name -> dense bf16 FLOP/s, for training plans and MFU: the profiles' GPUs and the training GPUs."""
    peaks = {name: profile.peak_flops["bf16"] for profile in DEVICES.values() for name in profile.cuda_names}
    return {**peaks, **TRAINING_GPU_BF16_PEAKS}


def cuda_peak_flops(device_name: str) -> tuple[float, str]:
    """Data-sheet bf16 peak of the CUDA device called ``device_name`` (NaN when unknown), and its source."""
    for key, peak in gpu_bf16_peaks().items():
        if key in device_name:
            return peak, f"{key} bf16 data sheet"
    return float("nan"), f"unknown GPU {device_name!r}"


# ---------------------------------------------------------------------------------------------------- this host
class CpuPeak:
    """The CPU's matmul peak in one dtype, as a reference for MFU: the best of repeated timed matmuls, raised
    whenever a later measurement (or an achieved rate) exceeds it, so that a measurement taken while the machine
    was busy cannot make MFU read above 100%."""

    def __init__(self, dtype: torch.dtype, size: int = 512, repeats: int = 5, seconds: float = 0.05):
        self.dtype, self.size, self.repeats, self.seconds = dtype, size, repeats, seconds
        self.flops = 0.0
        self.refresh()

    def refresh(self) -> float:
        self.flops = max(self.flops, *(measured_matmul_flops(self.dtype, self.size, self.seconds)
                                       for _ in range(self.repeats)))
        return self.flops

    def utilisation(self, achieved_flops: float) -> float:
        """achieved / peak, never above 1: an achieved rate above the reference proves the reference low."""
        self.flops = max(self.flops, achieved_flops)
        return achieved_flops / self.flops


def measured_matmul_flops(dtype: torch.dtype, size: int = 512, seconds: float = 0.2) -> float:
    """FLOP/s of this machine's CPU on a size^3 matmul in ``dtype`` (current thread count), one timing window."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def measured_storage_bandwidth(folder: str | Path | None = None, size: int = 1 << 26) -> float:
    """Bytes/s of reading a ``size``-byte file written in ``folder`` (default: the temp folder) after asking the
    kernel to drop it from the page cache (posix_fadvise DONTNEED, Linux), so the read comes from the device where
    the kernel honours that; on tmpfs the file lives in memory and this measures memory."""
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        with open(f.name, "rb", buffering=0) as reader:
            while reader.read(1 << 22):
                pass
        return size / (time.perf_counter() - start)


def measure_host_profile(copy_bytes: int = 1 << 28, matmul_size: int = 1024, repeats: int = 5) -> DeviceProfile:
    """This machine as a device profile: sustained memory bandwidth (numpy copy of ``copy_bytes``, each byte read
    once and written once, best of ``repeats``), fp32/bf16 matmul FLOP/s (torch, current thread count, best of
    ``repeats``) and the temp folder's storage read bandwidth."""
    import numpy as np
    import torch

    source = np.ones(copy_bytes // 8)
    target = np.empty_like(source)
    copy_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        copy_s = min(copy_s, time.perf_counter() - start)
    peak_flops = {precision: CpuPeak(dtype, matmul_size, repeats).flops
                  for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return DeviceProfile(name="host", memory_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
                         memory_bandwidth=2 * source.nbytes / copy_s, peak_flops=peak_flops, power_watts=None,
                         source=f"measured: numpy copy of {copy_bytes >> 20} MiB, torch.mm {matmul_size}^3 fp32/bf16 "
                                f"on {torch.get_num_threads()} threads, best of {repeats}",
                         storage_bandwidth=measured_storage_bandwidth(),
                         storage_source=f"measured: read of a 64 MiB file in {tempfile.gettempdir()} after dropping "
                                        "it from the page cache")


def get_profile(name: str) -> DeviceProfile:
    """``host`` (measured now) or a named device profile."""
    return measure_host_profile() if name == "host" else get_device(name)


def profile_names() -> list[str]:
    return ["host", *device_names()]


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they measure): CUDA's peak allocation, else the process's peak resident set size (weights,
    activations, KV cache and the runtime itself; it never goes down, so read it in a fresh process)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "process_peak_rss"
