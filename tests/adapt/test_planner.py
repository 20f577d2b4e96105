"""The memory planner's predictions against peak memory measured in fresh processes, and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from slmtrain.adapt.methods import METHODS, LoraOptions
from slmtrain.adapt.planner import measure_peak_bytes, no_grad_activation_bytes, plan_methods, predict
from tests.paths import REPO_ROOT
from slmtrain.hardware import get_device
from slmtrain.model import presets

CONFIG = presets.get("demo-5m", n_layer=3)  # 4.0M parameters: weights, not the runtime, dominate what is measured
SEQ_LEN, MICRO_BATCH = 128, 2
MEASURED = ("inference", "full", "lora", "qlora", "mezo", "mezo_lora")  # all six: bench/finetune_memory.py


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, float]]:
    """Two fresh one-thread processes at a time: resident memory does not depend on what runs beside them."""
    with ThreadPoolExecutor(2) as pool:
        peaks = pool.map(lambda method: measure_peak_bytes(CONFIG, method, SEQ_LEN, MICRO_BATCH, LoraOptions()),
                         MEASURED)
        return dict(zip(MEASURED, peaks))


def test_predicted_peak_memory_is_within_25_percent_of_the_measured(measured):
    profile = get_device("jetson-orin-nano-8gb")
    for method in MEASURED[1:]:
        predicted = predict(CONFIG, method, SEQ_LEN, MICRO_BATCH, LoraOptions(), profile).peak_bytes
        assert 0.75 < predicted / measured[method]["peak_bytes"] < 1.25, method
    inference = 4 * CONFIG.params() + no_grad_activation_bytes(CONFIG, SEQ_LEN * MICRO_BATCH, perturbed_head=False)
    assert 0.75 < inference / measured["inference"]["peak_bytes"] < 1.25


def test_mezo_fits_in_inference_memory_and_backprop_does_not(measured):
    inference = measured["inference"]["peak_bytes"]
    assert inference > 4 * CONFIG.params()  # the weights were measured
    for method in ("mezo", "mezo_lora"):
        assert measured[method]["peak_bytes"] <= 1.1 * inference, method
    assert measured["full"]["peak_bytes"] > 3 * inference  # gradients, AdamW moments and activations


def test_recommendation_is_the_preferred_method_that_fits():
    plan = plan_methods(presets.get("smollm2-135m"), list(METHODS), 512, 4, LoraOptions(), get_device("h200"))
    assert plan["recommended"] == "lora" and all(m["fits"] for m in plan["methods"].values())
    small = get_device("jetson-orin-nano-8gb")
    tight = plan_methods(presets.get("smollm2-1.7b"), list(METHODS), 1024, 1, LoraOptions(), small)
    fits = {name: m["fits"] for name, m in tight["methods"].items()}
    assert fits == {"full": False, "lora": False, "dora": False, "qlora": False, "mezo": True, "mezo_lora": True}
    assert tight["recommended"] == "mezo_lora"  # zeroth-order on adapters: the only kind that fits in 8 GB


def test_command_line_plan_is_one_json_object():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "finetune.py"), "model=smollm2-135m",
                           "method=all", "plan=true", "hardware=jetson-orin-nano-8gb", "seq_len=256",
                           "micro_batch=2", "format=json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert set(plan["methods"]) == set(METHODS) and plan["recommended"] in METHODS
    assert all({"peak_bytes", "step_seconds", "fits"} <= set(m) for m in plan["methods"].values())
    assert plan["methods"]["mezo"]["peak_bytes"] < plan["methods"]["lora"]["peak_bytes"] < plan["methods"]["full"]["peak_bytes"]
