"""Hardware co-design: measure candidate shapes on this machine, predict their loss, keep the Pareto front.

    python launch/codesign.py params=100e6:400e6 hardware=host precision=bf16|int8|int4 context=2048 out=DIR
        [tokens=N law=epoch min_decode_tokens_per_s=X max_memory=BYTES family=any|balanced|deep-thin]
        [max_candidates=16 rounds=2 time_budget_s=900 prompt=128 gen=8 threads=1 seed=0 format=table|json]
Writes DIR/codesign.json and DIR/codesign.png; `python launch/train.py model=@DIR/codesign.json` trains the
recommended shape. format=json prints exactly one JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import json

from slmtrain.config import announce, build, cli_main, split_args
from slmtrain.scaling.codesign import TABLE_COLUMNS, CodesignOptions, codesign, write_outputs

USAGE = "python launch/codesign.py params=100e6:400e6 precision=bf16 context=2048 out=DIR"


def run(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    options = announce(build(CodesignOptions, overrides, usage=USAGE))
    from slmtrain.eval.runtime import SHAPE_PRELOAD, bench_shape

    result = codesign(options, bench_shape, SHAPE_PRELOAD)  # scaling measures through eval's runtime bench
    json_path, plot_path = write_outputs(result, options.out)
    if options.format == "json":
        print(json.dumps(result))
        return 0
    from slmtrain.eval.report import format_table

    rows = sorted(result["candidates"], key=lambda r: r["decode_latency_ms"])
    print(format_table(rows, TABLE_COLUMNS))
    print(f"front: {', '.join(result['front'])}\nrecommended: {result['recommended']}")
    print(result["explanation"])
    for preset in result["presets_vs_front"]:
        print(f"preset {preset['name']}: " + ("on the front" if preset["on_front"] else
              f"front loss at the same latency {preset['front_loss_at_same_latency']}, "
              f"front speed-up at the same loss {preset['front_speedup_at_same_loss']}"))
    print(f"wrote {json_path} and {plot_path}")
    return 0


main = cli_main(run, CodesignOptions, doc=__doc__)
