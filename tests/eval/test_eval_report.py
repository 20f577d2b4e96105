from __future__ import annotations

import csv
from types import SimpleNamespace

from slmtrain.eval.report import append_csv, format_table, plot_runtime
from slmtrain.eval.runtime import decode_vs_context
from slmtrain.hardware import measure_host_profile


def test_csv_appends_and_widens_to_new_columns(tmp_path):
    path = tmp_path / "results.csv"
    append_csv(path, [{"model": "a", "acc": 0.5}])
    append_csv(path, [{"model": "b", "acc": 0.75}])
    append_csv(path, [{"model": "c", "profile": {"name": "host", "bandwidth": 2.0}, "depths": [1, 2]}])
    rows = list(csv.DictReader(path.open()))
    assert [r["model"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["acc"] == "0.5" and rows[0]["profile.name"] == "" and rows[2]["profile.bandwidth"] == "2.0"
    assert rows[2]["depths"] == "[1, 2]"


def test_table_aligns_columns():
    table = format_table([{"task": "piqa", "acc": 0.123456}, {"task": "arc-challenge", "acc": None}])
    lines = table.splitlines()
    assert lines[0].split() == ["task", "acc"] and "0.1235" in lines[1]
    assert lines[1].index("0.1235") == lines[0].index("acc")


def test_runtime_plot_is_written(model, tmp_path):
    profile = measure_host_profile(copy_bytes=1 << 20, matmul_size=64, repeats=1)
    rows = decode_vs_context(model, [0, 32], gen=2, repeats=1, warmup=0, profile=profile)
    assert rows[1]["kv_cache_bytes"] > rows[0]["kv_cache_bytes"] and "predicted_decode_tokens_per_s" in rows[0]
    result = SimpleNamespace(weight_bytes=1000, test="pp8/tg2", device="cpu")  # the RuntimeResult fields it reads
    path = plot_runtime(result, rows, tmp_path / "p.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
