"""Expert offloading: with at most N experts per layer in memory, the rest read from the memory-mapped safetensors
files, greedy decoding is token-identical to the all-resident model; resident bytes fall with N as predicted; bad
cache sizes and models are one clear error; bench_device reports the offload figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmtrain.config import ConfigError, UserError
from slmtrain.hardware import DEVICES, measure_host_profile
from slmtrain.model import presets
from slmtrain.model.formats.hf import export_hf, load_hf
from slmtrain.model.offload import load_offloaded, measure_offloaded_decode, resident_weight_bytes
from slmtrain.model.transformer import Transformer
from tests.model.formats.test_hf import randomize
from tests.output import diagnostics

REPO = Path(__file__).resolve().parents[2]
EXPERTS = 8


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory) -> Path:
    """A Mixtral export of a 2-layer, 8-expert top-2 model with random weights (routers included)."""
    model = Transformer(presets.get("tiny-moe", moe={"experts": EXPERTS, "top_k": 2}))
    randomize(model, seed=5)
    return export_hf(model, tmp_path_factory.mktemp("moe") / "hf")


@pytest.mark.parametrize("resident", [1, 3, EXPERTS])
def test_offloaded_greedy_decoding_is_token_identical(moe_dir: Path, resident: int) -> None:
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    expected = load_hf(moe_dir).generate(prompt, 24, temperature=0)
    model, stats = load_offloaded(moe_dir, resident)
    assert torch.equal(model.generate(prompt, 24, temperature=0), expected)
    caches = [layer.experts.cache for layer in model.moe_layers()]
    expert_bytes = 3 * 64 * 64 * 4  # gate, up and down of 64 x 64, fp32
    assert stats.bytes_read == stats.misses * expert_bytes
    if resident == EXPERTS:  # each expert the tokens chose was read once, then always a hit
        assert stats.misses == sum(len(cache) for cache in caches)
    else:  # 30 tokens x 2 choices visit more experts than fit: full caches, and re-reads
        assert all(len(cache) == resident for cache in caches) and stats.misses > 2 * resident


def test_resident_memory_falls_with_the_cache_size_as_predicted(moe_dir: Path) -> None:
    figures = {}
    for resident in (1, 4, EXPERTS):
        model, stats = load_offloaded(moe_dir, resident)
        figures[resident] = measure_offloaded_decode(model, stats, prompt=32, gen=16, memory_bandwidth=10e9,
                                                     storage_bandwidth=1e9)
        # at most the non-expert weights + N experts per layer; exactly that once the tokens chose N or more
        assert figures[resident]["resident_weight_bytes"] == resident_weight_bytes(model)
        assert figures[resident]["resident_weight_bytes"] <= figures[resident]["max_resident_weight_bytes"]
        assert (figures[resident]["resident_weight_bytes"] == figures[resident]["max_resident_weight_bytes"]
                or resident == EXPERTS)
    resident_bytes = [figures[n]["resident_weight_bytes"] for n in (1, 4, EXPERTS)]
    assert resident_bytes[0] < resident_bytes[1] < resident_bytes[2]
    storage = [figures[n]["storage_bytes_per_token"] for n in (1, 4, EXPERTS)]
    assert storage[0] > storage[1] > storage[2]  # with every expert resident only first uses read the file
    assert figures[1]["cache_hit_rate"] < figures[4]["cache_hit_rate"] < figures[EXPERTS]["cache_hit_rate"]
    speeds = [figures[n]["predicted_offload_decode_tokens_per_s"] for n in (1, 4, EXPERTS)]
    assert speeds[0] < speeds[1] < speeds[2]
    assert speeds[2] == pytest.approx(1 / (figures[EXPERTS]["memory_bytes_per_token"] / 10e9 + storage[2] / 1e9))


def test_bad_offload_requests_are_one_clear_error(moe_dir: Path, tmp_path: Path) -> None:
    for resident in (0, EXPERTS + 1):
        with pytest.raises(ConfigError) as error:
            load_offloaded(moe_dir, resident)
        assert error.value.key == "max_resident_experts" and f"{EXPERTS} experts" in error.value.message
    export_hf(Transformer(presets.get("tiny")), tmp_path / "dense")
    with pytest.raises(ConfigError, match="dense model"):
        load_offloaded(tmp_path / "dense", 1)
    with pytest.raises(UserError, match="Hugging Face model directory"):
        load_offloaded(tmp_path / "missing", 1)


def test_every_device_profile_has_a_storage_bandwidth_with_its_source() -> None:
    for profile in DEVICES.values():
        assert profile.storage_bandwidth and profile.storage_bandwidth < profile.memory_bandwidth, profile.name
        assert profile.storage_source, profile.name
    host = measure_host_profile(copy_bytes=1 << 22, matmul_size=64, repeats=1)
    assert host.storage_bandwidth > 1e6 and host.storage_source.startswith("measured")


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/bench_device.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_bench_device_reports_the_offload_figures(moe_dir: Path) -> None:
    result = run_bench(f"model={moe_dir}", "offload=experts", "max_resident_experts=2", "prompt=8", "gen=8",
                       "repeats=1", "warmup=0", "hardware=jetson-orin-nano-8gb", "format=json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_resident_experts"] == 2 and 0 < report["cache_hit_rate"] < 1
    assert report["storage_bytes_per_token"] > 0 and report["resident_weight_bytes"] > 0
    assert report["predicted_offload_decode_tokens_per_s"] == pytest.approx(1 / (
        report["memory_bytes_per_token"] / DEVICES["jetson-orin-nano-8gb"].memory_bandwidth
        + report["storage_bytes_per_token"] / DEVICES["jetson-orin-nano-8gb"].storage_bandwidth))
    too_many = run_bench(f"model={moe_dir}", "offload=experts", "max_resident_experts=9")
    assert too_many.returncode == 2 and diagnostics(too_many.stderr).strip().splitlines() == [
        f"error: max_resident_experts: must be between 1 and the model's {EXPERTS} experts per layer, got 9"]
    missing = run_bench(f"model={moe_dir}", "offload=experts")
    assert missing.returncode == 2 and "max_resident_experts" in diagnostics(missing.stderr)
