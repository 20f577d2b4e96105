"""Print what a model costs, from its config alone: parameters (total and active), FLOPs per token, KV-cache and
weight bytes (held, and read per decoded token).

    python launch/model_info.py model=NAME [model.KEY=VALUE ...] [seq_len=N] [format=table|json]

Without a preset name, ``model.KEY=VALUE`` pairs describe a model from scratch (ModelConfig's fields).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from slmtrain.config import ConfigError, announce, build, cli_main, split_args, to_dict
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig

USAGE = "model=NAME [model.KEY=VALUE ...] [seq_len=N] [format=table|json]"


@dataclass
class Args:
    model: dict[str, Any] = field(default_factory=dict)  # {"preset": NAME, KEY: VALUE, ...}
    seq_len: int | None = None  # context for the attention FLOPs; None: the model's max_seq_len
    format: Literal["table", "json"] = "table"

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model", f"required: {USAGE}; presets: {', '.join(presets.names())}")
        if self.seq_len is not None and self.seq_len <= 0:
            raise ConfigError("seq_len", f"must be positive, got {self.seq_len}")


def model_config(fields: dict[str, Any]) -> ModelConfig:
    try:
        return presets.resolve(fields)
    except ConfigError as e:
        raise (e if e.key == "model" else e.under("model")) from None  # name the key as the user typed it


def format_accounting(name: str, config: ModelConfig, report: dict[str, float]) -> str:
    """The shape in one line, then each accounted figure (count and readable unit) right-aligned."""
    rows = [(key, f"{value:,.0f}", _readable(key, value)) for key, value in report.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    shape = (f"{name}: {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads ({config.kv_heads} KV, "
             f"dim {config.head_dim_}), {config.ffn} {config.ffn_dim}, vocab {config.padded_vocab_size}, "
             f"{'tied' if config.tie_embeddings else 'untied'} embeddings")
    if config.moe is not None:
        moe = config.moe
        shape += (f"; MoE {moe.experts} experts, top-{moe.top_k} (width {config.expert_ffn_dim})"
                  + (f", {moe.shared_experts} shared (width {config.shared_ffn_dim})" if moe.shared_experts else "")
                  + (f", first {moe.dense_layers} layers dense" if moe.dense_layers else ""))
    lines = [f"{key:<{widths[0]}}  {value:>{widths[1]}}  {readable:>{widths[2]}}".rstrip() for key, value, readable
             in rows]
    return "\n".join([shape, *lines])


def _readable(key: str, value: float) -> str:
    """134515008 params -> '134.52 M'; FLOPs and bytes get their unit; plain counts (seq_len) nothing."""
    unit = next((u for part, u in (("params", ""), ("flops", "FLOP"), ("bytes", "B")) if part in key), None)
    if unit is None:
        return ""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def run(argv: list[str]) -> int:
    _, overrides = split_args(presets.expand_shorthand(argv))
    args = build(Args, overrides)
    config = model_config(args.model)
    announce(args)  # once the model's keys are valid too: a bad key is one line
    report = config.accounting(args.seq_len)
    name = str(args.model.get("preset", "custom"))
    if args.format == "json":
        print(json.dumps({"model": name, **report, "config": to_dict(config)}))
    else:
        print(format_accounting(name, config, report))
    return 0


main = cli_main(run, Args, doc=__doc__)
