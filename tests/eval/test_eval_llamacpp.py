"""The llama.cpp engine beside the PyTorch one: the same figures and roofline ratios, from bench_device too."""

from __future__ import annotations

import json

import pytest

from slmtrain.config import ConfigError, UserError
from slmtrain.eval.llamacpp import bench_engines, open_gguf
from slmtrain.hardware import get_profile
from tests.eval.eval_helpers import tiny_model
from tests.cli.test_commands import launch

FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes", "weight_bytes",
           "predicted_decode_tokens_per_s")


def test_both_engines_are_measured_with_their_own_roofline():
    profile = get_profile("jetson-orin-nano-8gb")
    engines = bench_engines(tiny_model(), "q8_0", prompt=32, gen=8, repeats=2, warmup=1, profile=profile, threads=1)
    llama, pytorch = engines["llama.cpp"], engines["pytorch"]
    assert (llama.engine, pytorch.engine) == ("llama.cpp", "pytorch")
    for figures in (llama, pytorch):
        assert all(getattr(figures, key) > 0 for key in FIGURES)
        assert figures.decode_measured_over_predicted == pytest.approx(
            figures.decode_tokens_per_s / figures.predicted_decode_tokens_per_s)
    assert llama.threads == pytorch.threads == 1
    assert llama.weight_bytes < pytorch.weight_bytes / 2  # 8.5-bit Q8_0 blocks against fp32
    # the roofline reads each engine's own bytes: fewer bytes, a higher ceiling
    assert llama.predicted_decode_tokens_per_s > pytorch.predicted_decode_tokens_per_s


def test_bench_device_with_the_llama_cpp_engine(capsys):
    main = launch("bench_device")
    assert main(["model=tiny", "engine=llama.cpp", "quant=q4_0", "prompt=16", "gen=4", "repeats=1", "warmup=0",
                 "threads=1", "format=json", "hardware=jetson-orin-nano-8gb"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["llama.cpp"]["quant"] == "q4_0" and result["pytorch"]["engine"] == "pytorch"
    assert main(["model=tiny", "engine=llama.cpp", "quant=f16", "prompt=16", "gen=4", "repeats=1", "warmup=0",
                 "hardware=jetson-orin-nano-8gb"]) == 0
    assert "llama.cpp f16" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="quant"):
        main(["model=tiny", "engine=llama.cpp", "quant=int8"])


def test_a_file_llama_cpp_cannot_load_is_one_clear_error(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="llama.cpp cannot load it"):
        open_gguf(tmp_path / "bad.gguf")
    with pytest.raises(UserError, match="not found"):
        open_gguf(tmp_path / "missing.gguf")
