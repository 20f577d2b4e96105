"""Declarations: the built-in pipelines load, and a step type that does not exist is named with the valid ones."""

from __future__ import annotations

import pytest

from slmtrain.config import ConfigError
from slmtrain.data.curate.config import load_pipeline_config


def test_declarations_load_and_bad_keys_are_named() -> None:
    for name in ("fineweb", "fineweb_fast", "fineweb_edu", "dclm", "demo"):
        assert load_pipeline_config(name).steps
    fast = load_pipeline_config("fineweb_fast").steps
    assert list(fast) == [name.replace("trafilatura", "resiliparse") for name in load_pipeline_config("fineweb").steps]
    assert "edu" in load_pipeline_config("fineweb_edu").steps and "minhash" in load_pipeline_config("fineweb_edu").steps
    with pytest.raises(ConfigError, match="valid choices: .*demo"):
        load_pipeline_config("nope")
    with pytest.raises(ConfigError, match="steps.x.type.*valid choices"):
        load_pipeline_config("demo", {"steps": {"x": {"type": "magic"}}})
