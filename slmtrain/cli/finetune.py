"""Personalise a model on the user's own data, or plan which method fits a device first.

    python launch/finetune.py model=PATH data=FILE.jsonl method=lora|dora|qlora|full|mezo|mezo_lora run_dir=DIR
        [recipe=personalize_lora|personalize_mezo lr=... seq_len=256 micro_batch=4 trainer.max_steps=100
         lora.rank=8 lora.alpha=16 lora.dropout=0 lora.target_modules=[qkv,out,up,down]
         mezo.epsilon=1e-3 mezo.samples=1 val_data=FILE.jsonl val_fraction=0.1]
    python launch/finetune.py model=PATH method=all plan=true [hardware=NAME seq_len=N micro_batch=B] format=json
"""

from __future__ import annotations

import json

from slmtrain.config import announce, cli_main, split_args

USAGE = "model=PATH data=FILE.jsonl method=NAME run_dir=DIR [key=value ...], or model=PATH method=all plan=true"


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    from slmtrain.adapt.run import finetune, load_options

    options = announce(load_options(overrides, usage=USAGE))
    if options.plan:
        from slmtrain.adapt.methods import METHODS
        from slmtrain.adapt.planner import format_plan, plan_methods
        from slmtrain.artifacts import load_model
        from slmtrain.hardware import get_profile

        config = load_model(options.model).model.config
        methods = list(METHODS) if options.method == "all" else [options.method]
        plan = plan_methods(config, methods, options.seq_len, options.micro_batch, options.lora,
                            get_profile(options.hardware), options.mezo.samples)
        print(json.dumps(plan) if options.format == "json" else format_plan(plan))
        return 0
    result = finetune(options)
    print(json.dumps({k: result[k] for k in ("method", "val_loss_before", "val_loss_after", "seconds_per_step",
                                             "tokens_per_s", "peak_memory_bytes", "outputs")}))
    return 0


main = cli_main(run, "slmtrain.adapt.run:FinetuneOptions", doc=__doc__)
