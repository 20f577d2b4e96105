"""launch/scaling.py sweep: a grid of tiny training runs on real shards, fitted; a re-run skips finished runs."""

from __future__ import annotations

import math

from slmtrain.orchestrate import run_sweep


def test_sweep_trains_grid_then_fits_and_resumes(shards, tmp_path):
    options = {
        "recipe": "demo", "out": str(tmp_path / "sweep"), "d_models": [32, 64], "tokens_per_param": [0.25, 0.5, 1],
        "bootstrap": 0, "train": {
            "model": {"preset": "tiny", "vocab_size": 512, "max_seq_len": 64},
            "data": {"shards": str(shards), "build": "none", "seq_len": 64, "val_samples": 8},
            "batch": {"tokens": 4096, "micro_batch": 64}, "schedule": {"kind": "cosine", "warmup_steps": 2},
            "optim": {"lr": 1e-2}, "val_every_n_steps": 1000, "ckpt_every_n_steps": 1000,
        },
    }
    result = run_sweep(options)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "result.json").is_file())
    assert runs == sorted(f"d{d}-tpp{r:g}" for d in (32, 64) for r in (0.25, 0.5, 1))
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("E", "A", "B", "alpha", "beta"))
    assert (tmp_path / "sweep" / "scaling_fit.png").stat().st_size > 0
    stamps = {r: (tmp_path / "sweep" / r / "result.json").stat().st_mtime_ns for r in runs}
    run_sweep(options)
    assert stamps == {r: (tmp_path / "sweep" / r / "result.json").stat().st_mtime_ns for r in runs}
