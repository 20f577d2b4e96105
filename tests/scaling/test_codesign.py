from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmtrain.config import ConfigError, build, parse_overrides
from slmtrain.eval.runtime import SHAPE_PRELOAD, bench_shape
from slmtrain.scaling.codesign import (CodesignOptions, Job, codesign, fit_decode_overhead, pareto_flags,
                                       sample_candidates, write_outputs)
from slmtrain.hardware import DeviceProfile
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.train.config import load_recipe

from tests.output import diagnostics

REPO = Path(__file__).resolve().parents[2]
TINY_SEARCH = {"params": "2e6:8e6", "widths": "128:384", "vocab": [4096], "context": 256, "max_candidates": 4,
               "rounds": 2, "compare_presets": False, "prompt": 32, "gen": 4}
PROFILE = DeviceProfile("test", 1e10, memory_bandwidth=1e10, peak_flops={}, power_watts=None, source="test")


def test_host_search_writes_a_non_dominated_front_and_trains_its_recommendation(tmp_path):
    options = build(CodesignOptions, {**TINY_SEARCH, "out": tmp_path / "out"})
    result = codesign(options, bench_shape, SHAPE_PRELOAD)
    json_path, plot_path = write_outputs(result, options.out)
    rows = json.loads(json_path.read_text())["candidates"]
    assert len(rows) == 4 and plot_path.stat().st_size > 0
    for row in rows:
        for key in ("name", "n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "ffn_hidden", "vocab_size",
                    "tie_embeddings", "params", "predicted_loss", "measured_prefill_tokens_per_s",
                    "measured_decode_tokens_per_s", "predicted_decode_tokens_per_s", "peak_memory_bytes", "pareto"):
            assert key in row, key
        assert row["rounds_measured"] == 2 and 2e6 <= row["params"] <= 8e6
    points = {r["name"]: (r["predicted_loss"], r["decode_latency_ms"]) for r in rows}

    def dominates(a, b):
        return a[0] <= b[0] and a[1] <= b[1] and a != b

    for row in rows:  # every front point undominated, every other point dominated by someone
        beaten = any(dominates(other, points[row["name"]]) for other in points.values())
        assert row["pareto"] == (not beaten)
    front = [r for r in rows if r["pareto"]]
    assert result["recommended"] == min(front, key=lambda r: r["predicted_loss"])["name"]
    argv = presets.expand_shorthand([f"model=@{json_path}"])
    trained = load_recipe("demo", parse_overrides(argv)).model_config
    recommended = next(r for r in rows if r["name"] == result["recommended"])
    assert trained == build(ModelConfig, recommended["config"])
    assert (trained.n_layer, trained.d_model, trained.max_seq_len) == (recommended["n_layer"],
                                                                       recommended["d_model"], 256)


def test_decode_speed_orders_shapes_that_differ_only_in_bytes_per_token():
    shape = {"n_layer": 2, "d_model": 256, "n_head": 4, "ffn_hidden": 512, "max_seq_len": 64}
    speeds = {}
    for vocab in (1024, 65536):  # the tied head reads 0.5 MiB or 32 MiB of bf16 weights per token
        config = ModelConfig(vocab_size=vocab, **shape)
        job = Job(f"v{vocab}", dataclasses.asdict(config), "bf16", 64, 16, 8, 1, PROFILE)
        speeds[vocab] = [bench_shape(job) for _ in range(2)]
    best = {vocab: max(m.decode_tokens_per_s for m in runs) for vocab, runs in speeds.items()}
    assert best[1024] > 2 * best[65536]
    assert speeds[1024][0].predicted_decode_tokens_per_s > speeds[65536][0].predicted_decode_tokens_per_s
    assert speeds[1024][0].weight_bytes < speeds[65536][0].weight_bytes


def test_a_fixed_seed_gives_the_same_candidate_list():
    options = {**TINY_SEARCH, "params": "2e6:30e6", "widths": "128:768", "out": "unused", "max_candidates": 6}
    first = sample_candidates(build(CodesignOptions, {**options, "seed": 3}))
    assert first == sample_candidates(build(CodesignOptions, {**options, "seed": 3}))
    assert first != sample_candidates(build(CodesignOptions, {**options, "seed": 4}))
    for config in first:
        assert config.d_model % 128 == 0 and config.ffn_dim % 128 == 0 and config.head_dim_ in (64, 128)
        assert 2e6 <= config.params() <= 30e6


def test_pareto_flags_match_a_hand_worked_case():
    points = [(3.0, 10.0), (2.5, 20.0), (2.8, 25.0), (2.5, 30.0), (3.5, 5.0), (3.0, 10.0)]
    # (2.8, 25) is beaten by (2.5, 20); (2.5, 30) by (2.5, 20); the two equal (3.0, 10) points both stay
    assert pareto_flags(points) == [True, True, False, False, True, True]


def test_overhead_fit_recovers_bandwidth_and_per_layer_cost_and_beats_the_roofline():
    bandwidth, per_layer = 1e10, 2e-4  # truth: the machine reaches half the profile's bandwidth
    rows = []
    for layers, megabytes in ((4, 50), (30, 60), (12, 200), (24, 400), (8, 120)):
        seconds = megabytes * 1e6 / (0.5 * bandwidth) + layers * per_layer
        rows.append({"n_layer": layers, "predicted_decode_tokens_per_s": bandwidth / (megabytes * 1e6),
                     "measured_decode_tokens_per_s": 1 / seconds})
    fit = fit_decode_overhead(rows, bandwidth)
    assert fit["per_layer_overhead_s"] == pytest.approx(per_layer, rel=1e-6)
    assert fit["bandwidth_fraction_of_profile"] == pytest.approx(0.5, rel=1e-6)
    assert fit["fitted_loo_mean_abs_error"] < 1e-6 < fit["roofline_mean_abs_error"]
    assert not fit_decode_overhead(rows[:2], bandwidth)["fitted"]


def test_model_at_a_file_that_is_not_a_codesign_result_is_one_config_error(tmp_path):
    bad = tmp_path / "codesign.json"
    bad.write_text('{"candidates": [], "recommended": "x"}')
    with pytest.raises(ConfigError, match="not a codesign.json"):
        presets.expand_shorthand([f"model=@{bad}"])
    run = subprocess.run([sys.executable, str(REPO / "launch" / "codesign.py"), "params=400e6:100e6",
                          f"out={tmp_path}"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and diagnostics(run.stderr).strip().count("\n") == 0 and "MIN <= MAX" in diagnostics(run.stderr)
