"""Routing end to end on a real pair: one-digit sums, a barely trained small model and a trained larger one served
over HTTP by slmtrain's own server, calibrated and evaluated through launch/route.py's library functions."""

from __future__ import annotations

import json

import pytest
import torch

from slmtrain.artifacts import load_model
from slmtrain.collab import arithmetic
from slmtrain.collab.commands import CalibrateOptions, EvalOptions, calibrate, evaluate
from slmtrain.collab.routing import (Answering, CloudEndpoint, LocalModel, Router, collect_outcomes, open_cloud,
                                     read_examples)
from slmtrain.config import ConfigError, UserError
from slmtrain.serve.app import create_app
from slmtrain.serve.background import BackgroundServer
from slmtrain.serve.schemas import ServeOptions
from tests.cli.test_commands import launch

KEY = "cloud-key"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Models and data on disk: a small model right on some sums, a larger one right on (nearly) all."""
    root = tmp_path_factory.mktemp("pair")
    torch.set_num_threads(1)
    small = arithmetic.save_adder(arithmetic.train_adder(arithmetic.adder(1, 32, 1), 80, 1), root / "small")
    large = arithmetic.save_adder(arithmetic.train_adder(arithmetic.adder(2, 64, 1), 250, 1), root / "large")
    calibration = arithmetic.write_examples(root / "calibrate.jsonl", arithmetic.sums(150, 1, seed=1))
    test = arithmetic.write_examples(root / "test.jsonl", arithmetic.sums(60, 1, seed=2))
    return {"root": root, "small": str(small), "large": str(large), "calibration": calibration, "test": test}


@pytest.fixture(scope="module")
def cloud(pair):
    app = create_app(load_model(pair["large"]), ServeOptions(model=pair["large"], api_key=KEY, name="large"))
    with BackgroundServer(app) as server:
        yield server


def options(pair, server, **overrides) -> CalibrateOptions:
    return CalibrateOptions(**{"local": pair["small"], "cloud": server.base_url, "cloud_key": KEY,
                               "data": pair["calibration"], "out": pair["root"] / "router.json", "target": 0.9,
                               "max_tokens": 3, **overrides})


def test_calibrate_then_evaluate_on_held_out_data(pair, cloud):
    report = calibrate(options(pair, cloud))
    assert report["cloud_quality"] > 0.9 > report["local_quality"] > 0.05  # the pair really differs
    assert report["quality"] >= 0.9 * report["cloud_quality"] and report["cloud_failures"] == 0
    recorded = json.loads((pair["root"] / "router.json").read_text())
    assert recorded["pair"]["cloud"] == {"kind": "url", "base_url": cloud.base_url, "model": "large"}
    assert recorded["signals"] == ["mean_logprob", "min_logprob", "mean_entropy"] and recorded["embedding"]

    result = evaluate(EvalOptions(router=pair["root"] / "router.json", data=pair["test"], cloud_key=KEY))
    rows = {row["policy"].split(" at ")[0]: row for row in result["rows"]}
    assert rows["always local"]["cloud_fraction"] == 0 and rows["always cloud"]["cloud_fraction"] == 1
    assert rows["router"]["cloud_fraction"] == rows["random"]["cloud_fraction"] < 1  # cloud calls were saved
    assert rows["router"]["quality"] > rows["random"]["quality"]  # confidence beats chance at the same fraction
    assert rows["always cloud"]["cost"] > rows["router"]["cost"] > 0 == rows["always local"]["cost"]
    assert result["guarantee_holds"] == (rows["router"]["quality"] >= result["required_quality"])
    assert (pair["root"] / "router.png").stat().st_size > 10_000
    fractions = [f for f, _ in result["curve"]]
    assert fractions[0] == 1.0 and fractions[-1] == 0.0


def test_agreement_of_samples_is_an_extra_signal(pair):
    local = LocalModel(pair["small"], Answering(max_tokens=3, samples=3))
    answer = local.answer("3+4=")
    assert set(answer.signals) == {"mean_logprob", "min_logprob", "mean_entropy", "agreement"}
    assert answer.signals["agreement"] in (0, 1 / 3, 2 / 3, 1) and answer.signals["min_logprob"] <= 0


def test_a_router_refuses_another_model_pair(pair, cloud):
    calibrate(options(pair, cloud, cloud=pair["large"], embedding=False, out=pair["root"] / "plain.json"))
    with pytest.raises(UserError, match="calibrated for the local model .* recalibrate"):
        evaluate(EvalOptions(router=pair["root"] / "plain.json", data=pair["test"], local=pair["large"],
                             cloud_key=KEY))
    (pair["root"] / "broken.json").write_text('{"pair": {}}')
    with pytest.raises(UserError, match="not a router file"):
        Router.load(pair["root"] / "broken.json")


def test_a_calibration_set_too_small_says_how_many_examples_are_needed(pair):
    few = arithmetic.write_examples(pair["root"] / "few.jsonl", arithmetic.sums(40, 1, seed=3))
    with pytest.raises(UserError, match=r"needs at least \d+ \(data has 40 examples"):
        calibrate(CalibrateOptions(local=pair["small"], cloud=pair["large"], data=few, out=pair["root"] / "x.json",
                                   target=0.95, embedding=False, max_tokens=3))


def test_cloud_that_does_not_answer_or_refuses_the_key_is_one_clear_error(pair, cloud):
    answering = Answering(max_tokens=3)
    with pytest.raises(UserError, match="refused the API key"):
        open_cloud(cloud.base_url, "wrong", None, answering, 5.0)
    with BackgroundServer(create_app(load_model(pair["large"]), ServeOptions(model=pair["large"]))) as gone:
        url = gone.base_url
    with pytest.raises(UserError, match="does not answer"):
        open_cloud(url, None, None, answering, 5.0)
    with pytest.raises(UserError, match="has no model 'gpt-9'"):
        open_cloud(cloud.base_url, KEY, "gpt-9", answering, 5.0)


def test_cloud_failures_mid_run_fall_back_to_the_local_answer_and_are_counted(pair):
    answering = Answering(max_tokens=3)
    with BackgroundServer(create_app(load_model(pair["large"]), ServeOptions(model=pair["large"]))) as server:
        endpoint = CloudEndpoint(server.base_url, None, None, answering, timeout_s=5.0)
    local = LocalModel(pair["small"], answering)
    outcomes = collect_outcomes(read_examples(pair["test"])[:3], local, endpoint)
    assert all(o.cloud.failed and o.cloud.text == o.local.text and o.cloud.tokens == 0 for o in outcomes)


def test_bad_data_files_and_commands_are_one_line_errors(pair, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": 3}\n')
    with pytest.raises(UserError, match="bad.jsonl:2: not a routing record"):
        read_examples(bad)
    route = launch("route")
    with pytest.raises(ConfigError, match="expected calibrate, eval or demo"):
        route(["serve"])
    with pytest.raises(ConfigError, match="target: must be in"):
        route(["calibrate", "local=a", "cloud=b", f"data={bad}", "out=r.json", "target=1.5"])
    with pytest.raises(UserError, match="has no tokenizer"):
        launch("serve")(["model=tiny"])
