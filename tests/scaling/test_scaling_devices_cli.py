"""Device constraints, the sweep plan, plots, and the launch/scaling.py command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmtrain.config import ConfigError, UserError
from tests.output import diagnostics
from tests.paths import REPO_ROOT
from slmtrain.model import presets
from slmtrain.hardware import DEVICES
from slmtrain.scaling.devices import Deployment, plan_for_device, shape_ladder
from slmtrain.scaling.laws import PUBLISHED
from slmtrain.scaling.plots import plot_fit
from slmtrain.scaling.runs import Runs
from slmtrain.scaling.sweep import plan_grid

LAW = PUBLISHED["chinchilla"]


def test_device_profiles_have_sources() -> None:
    for name in ("jetson-agx-orin-64gb", "apple-m3-max-128gb", "snapdragon-8-gen-3", "h100-sxm", "h200"):
        profile = DEVICES[name]
        assert profile.memory_bytes > 0 and profile.memory_bandwidth > 0 and profile.peak_flops and profile.source


def test_decode_speed_on_a_published_spec_worked_by_hand() -> None:
    """SmolLM2-360M (HF config: vocab 49152, hidden 960, 32 layers, 15 heads, 5 KV heads of 64, MLP 2560, tied) on
    the Jetson Orin Nano 8GB (data sheet: 68 GB/s), int8 weights, fp16 KV cache, 2048 tokens of context:
    parameters 49152 x 960 + 32 x (2 x 960 x 960 + 2 x 960 x 320 + 3 x 960 x 2560 + 2 x 960) + 960 = 361,821,120
    (HF's count), one byte each; KV 2 x 32 x 5 x 64 x 2 bytes = 40,960 per token, 83,886,080 at 2048;
    68e9 / 445,707,200 bytes = 152.57 tokens/s."""
    model = presets.get("smollm2-360m")
    deployment = Deployment("jetson-orin-nano-8gb", precision="int8", context=2048)
    assert deployment.memory_needed(model) == 445_707_200
    assert deployment.decode_tokens_per_s(model) == pytest.approx(152.5665, rel=1e-6)


@pytest.mark.parametrize("device", ["jetson-orin-nano-8gb", "snapdragon-8-gen-3", "h100-sxm"])
def test_device_plan_picks_largest_model_that_fits(device: str) -> None:
    deployment = Deployment(device, precision="int4", context=4096, min_tokens_per_s=30)
    plan = plan_for_device(LAW, deployment, inference_tokens=1e12)
    assert deployment.fits(plan.model)
    assert plan.decode_tokens_per_s >= 30
    assert plan.memory_bytes <= 0.5 * DEVICES[device].memory_bytes
    bigger = [m for m in shape_ladder() if m.params() > plan.params]
    assert bigger and not deployment.fits(bigger[0])
    assert plan.overtraining_factor > 1  # inference demand over-trains
    assert plan.to_dict()["tokens_per_param"] == pytest.approx(plan.tokens / plan.params)


def test_device_plan_with_target_loss_minimises_lifetime_flops() -> None:
    deployment = Deployment("h100-sxm", precision="bf16", min_tokens_per_s=50)
    plan = plan_for_device(LAW, deployment, inference_tokens=1e13, target_loss=2.2)
    assert plan.loss == pytest.approx(2.2)
    for model in shape_ladder():
        n = model.params()
        if deployment.fits(model) and n > LAW.min_params_for_loss(2.2):
            assert 6 * n * LAW.tokens_for_loss(n, 2.2) + 2 * n * 1e13 >= plan.train_flops + plan.inference_flops - 1


def test_infeasible_device_constraints() -> None:
    with pytest.raises(ConfigError, match="infeasible deployment on apple-a17-pro"):
        plan_for_device(LAW, Deployment("apple-a17-pro", precision="fp32", min_tokens_per_s=1e5))
    with pytest.raises(UserError, match="no model that fits"):
        plan_for_device(LAW, Deployment("apple-a17-pro"), target_loss=1.75)
    with pytest.raises(ConfigError, match="valid choices"):
        Deployment("toaster")


def test_sweep_plan_spans_sizes_and_ratios() -> None:
    runs = plan_grid()
    assert len(runs) == 16
    assert len({r.params for r in runs}) == 4 and len({r.tokens / r.params for r in runs}) == 4
    for run in runs:
        assert presets.get("tiny", **run.model).params() == run.params


def test_plot_writes_png(tmp_path: Path) -> None:
    n = np.geomspace(1e7, 1e9, 12)
    runs = Runs(n, 20 * n, LAW.loss(n, 20 * n), "t")
    path = plot_fit(LAW, runs, tmp_path / "fit.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "launch/scaling.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_budget_and_fit_json(tmp_path: Path) -> None:
    out = json.loads(cli("budget", "compute=5.76e23", "E=1.69", "A=406.4", "B=410.7", "alpha=0.34", "beta=0.28",
                         "format=json").stdout)
    assert {"params", "tokens", "tokens_per_param", "train_flops"} <= out.keys()
    assert out["params"] == pytest.approx(LAW.compute_optimal(5.76e23)[0])
    out = json.loads(cli("budget", "hardware=jetson-orin-nano-8gb", "deploy=true", "inference_tokens=1e12",
                         "format=json").stdout)
    assert {"params", "tokens", "tokens_per_param", "train_flops", "overtraining_factor", "shape"} <= out.keys()
    n, d = np.meshgrid(np.geomspace(5e7, 5e9, 5), np.geomspace(1e9, 3e11, 5))
    table = tmp_path / "runs.csv"
    table.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{LAW.loss(a, b)}\n" for a, b in zip(n.ravel(), d.ravel())))
    result = cli("fit", f"runs={table}", "bootstrap=10", f"plot={tmp_path / 'fit.png'}", "format=json")
    out = json.loads(result.stdout)
    assert {"E", "A", "B", "alpha", "beta", "intervals"} <= out.keys()
    assert out["alpha"] == pytest.approx(0.34, rel=1e-3)
    assert (tmp_path / "fit.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (("budget", "target_loss=1.5"), "target_loss: must exceed the irreducible loss"),
    (("budget", "compute=1e20", "bogus=1"), "bogus: unknown key"),
    (("budget",), "say what to budget"),
    (("fit", "runs=/nonexistent.csv"), "runs not found"),
    (("sweep", "recipe=nope"), "unknown recipe 'nope'"),
    (("budget", "compute=5.76e23", "hardware=nope"), "hardware: unknown device 'nope'; valid choices:"),
    (("budget", "params=nan"), "params: expected a number, got 'nan'"),
])
def test_cli_errors_are_one_line(args: tuple[str, ...], message: str, capsys) -> None:
    from slmtrain.cli.scaling import main

    with pytest.raises(SystemExit) as exit_code:
        main(list(args))
    assert exit_code.value.code == 2
    stderr = diagnostics(capsys.readouterr().err)
    assert message in stderr and len(stderr.strip().splitlines()) == 1
