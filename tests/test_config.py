"""Command-line values: text stays text where a str or Path is declared, every other type parses it, and values
that mean nothing (an empty path, NaN for an integer) are errors naming the key, never a silent substitute."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from slmtrain.config import ConfigError, build, parse_overrides
from slmtrain.train.config import load_recipe


@dataclass
class Options:
    api_key: str = "key"
    out: Path = Path("out")
    log: Path | None = None
    steps: int = 1
    lr: float = 1.0
    verbose: bool = False
    kind: Literal["a", "b"] = "a"
    bits: Literal[4, 8] = 4
    extra: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


def parsed(*argv: str) -> Options:
    return build(Options, parse_overrides(argv))


def test_text_fields_keep_the_text_as_typed() -> None:
    """YAML would read 007 as 7, 1e5 as 100000.0 and yes as True: an API key typed as 007 must stay 007."""
    for text in ("007", "1e5", "yes", "0x1F", "null-ish", "a=b"):
        assert parsed(f"api_key={text}").api_key == text
    assert parsed("out=007").out == Path("007")
    config = load_recipe("demo", parse_overrides(["name=007", "optim.lr=3e-3"]))
    assert config.name == "007" and config.optim.lr == 0.003


def test_other_types_parse_the_text() -> None:
    options = parsed("steps=1e3", "lr=.5", "verbose=yes", "kind=b", "bits=8", "sizes=1,2", "log=", "extra.n=5",
                     "extra.off=null", "extra.nested.x=[1,a]")
    assert (options.steps, options.lr, options.verbose, options.kind, options.bits) == (1000, 0.5, True, "b", 8)
    assert options.sizes == [1, 2] and options.log is None
    assert options.extra == {"n": 5, "off": None, "nested": {"x": [1, "a"]}}  # untyped: read as YAML


@pytest.mark.parametrize(("arg", "message"), [
    ("out=", "out: expected a path, got nothing"),
    ("out=null", "out: expected a path, got 'null'"),
    ("steps=nan", "steps: expected an integer, got 'nan'"),
    ("steps=inf", "steps: expected an integer, got 'inf'"),
    ("lr=nan", "lr: expected a number, got 'nan'"),
    ("bits=5", "bits: invalid value '5'; valid choices: 4, 8"),
    ("a..b=1", "is not of the form key=value"),
])
def test_values_that_mean_nothing_are_errors_naming_the_key(arg: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parsed(arg)

