"""Training runs (N, D, final loss) for fitting: from a CSV table or from slmtrain run directories.

CSV columns are matched case-insensitively after mapping spaces and dashes to underscores:
- parameters N: ``params``, ``n``, ``parameters``, ``n_params``, ``model_size`` (Epoch's ``Model Size``)
- tokens D:     ``tokens``, ``d``, ``n_tokens``, ``training_tokens``; or, when no token column is present,
                compute ``flops``, ``c``, ``compute``, ``training_flop(s)`` (Epoch's ``Training FLOP``) with D = C / (6 N)
- loss:         ``loss``, ``final_loss``, ``val_loss``, ``smoothed_loss`` (Sardana et al.'s ``Smoothed Loss``)

An slmtrain run directory holds ``plan.json`` (at least ``params`` and ``tokens``) and ``metrics.csv`` (``step``,
``train_loss``, optional ``val_loss``, ``tokens_seen``). Its loss is the last ``val_loss`` when the run logged one,
else the mean of the last ``TRAIN_LOSS_TAIL`` ``train_loss`` values (single steps are noisy).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from slmtrain.config import UserError

PARAM_COLUMNS = ("params", "n", "parameters", "n_params", "model_size")
TOKEN_COLUMNS = ("tokens", "d", "n_tokens", "training_tokens")
FLOP_COLUMNS = ("flops", "c", "compute", "training_flop", "training_flops")
LOSS_COLUMNS = ("loss", "final_loss", "val_loss", "smoothed_loss")
TRAIN_LOSS_TAIL = 10
# A run that stopped before this fraction of its planned tokens did not finish its schedule: its loss is not final.
COMPLETE_FRACTION = 0.99


@dataclass(frozen=True)
class Runs:
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if not (len(self.params) == len(self.tokens) == len(self.loss)):
            raise UserError(f"{self.source}: params, tokens and loss have different lengths")
        for name in ("params", "tokens", "loss"):
            values = getattr(self, name)
            bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
            if bad.size:
                raise UserError(f"{self.source}: {name} must be positive and finite; run {bad[0]} has {values[bad[0]]}")

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def flops(self) -> np.ndarray:
        return 6.0 * self.params * self.tokens

    def subset(self, index: np.ndarray) -> Runs:
        return Runs(self.params[index], self.tokens[index], self.loss[index], self.source)

    def drop_highest_loss(self, count: int) -> Runs:
        """Without the ``count`` highest-loss runs (Besiroglu et al. drop 5 diverged/outlying runs)."""
        if count < 0 or count >= len(self):
            raise UserError(f"cannot drop {count} of {len(self)} runs")
        return self.subset(np.sort(np.argsort(self.loss, kind="stable")[: len(self) - count]))


def read_runs(paths: str | Path | Sequence[str | Path]) -> Runs:
    """Runs from CSV files, run directories, or folders of run directories (a comma-separated string works too)."""
    if isinstance(paths, (str, Path)):
        paths = [p.strip() for p in str(paths).split(",") if p.strip()]
    if not paths:
        raise UserError("no runs given: pass runs=FILE.csv or runs=RUN_DIR[,RUN_DIR...]")
    tables: list[tuple[list[float], list[float], list[float]]] = []
    for path in map(Path, paths):
        if path.is_file():
            tables.append(_read_csv(path))
        elif (path / "plan.json").is_file():
            tables.append(tuple([v] for v in _read_run_dir(path)))  # type: ignore[arg-type]
        elif path.is_dir():
            run_dirs = sorted(p for p in path.iterdir() if (p / "plan.json").is_file())
            if not run_dirs:
                raise UserError(f"{path}: neither a run directory (plan.json) nor a folder of run directories")
            tables.extend(tuple([v] for v in _read_run_dir(p)) for p in run_dirs)  # type: ignore[misc]
        else:
            raise UserError(f"runs not found: {path}")
    params, tokens, loss = (np.array([v for table in tables for v in table[i]], dtype=float) for i in range(3))
    return Runs(params, tokens, loss, source=",".join(map(str, paths)))


def _normalise(column: str) -> str:
    return column.strip().lower().replace(" ", "_").replace("-", "_")


def _pick(columns: dict[str, str], choices: Sequence[str]) -> str | None:
    return next((columns[c] for c in choices if c in columns), None)


def _read_csv(path: Path) -> tuple[list[float], list[float], list[float]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = {_normalise(c): c for c in reader.fieldnames or []}
        param_col, token_col = _pick(columns, PARAM_COLUMNS), _pick(columns, TOKEN_COLUMNS)
        flop_col, loss_col = _pick(columns, FLOP_COLUMNS), _pick(columns, LOSS_COLUMNS)
        missing = [what for what, col in (("params", param_col), ("loss", loss_col)) if col is None]
        if token_col is None and flop_col is None:
            missing.append("tokens (or training FLOPs)")
        if missing:
            raise UserError(f"{path}: no column for {', '.join(missing)}; found columns {list(columns.values())}; "
                            f"accepted names: params {PARAM_COLUMNS}, tokens {TOKEN_COLUMNS}, flops {FLOP_COLUMNS}, "
                            f"loss {LOSS_COLUMNS}")
        params, tokens, loss = [], [], []
        for line, row in enumerate(reader, start=2):
            n = _number(row[param_col], path, line, param_col)  # type: ignore[index]
            d = (_number(row[token_col], path, line, token_col) if token_col is not None
                 else _number(row[flop_col], path, line, flop_col) / (6.0 * n))  # type: ignore[index]
            params.append(n)
            tokens.append(d)
            loss.append(_number(row[loss_col], path, line, loss_col))  # type: ignore[index]
    if not params:
        raise UserError(f"{path}: no runs (the table is empty)")
    return params, tokens, loss


def _number(text: str | None, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{path}:{line}: column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{path}:{line}: column {column!r} must be positive and finite, got {text!r}")
    return value


def _read_run_dir(run_dir: Path) -> tuple[float, float, float]:
    try:
        plan = json.loads((run_dir / "plan.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{run_dir / 'plan.json'}: not valid JSON ({e})") from None
    missing = [key for key in ("params", "tokens") if key not in plan]
    if missing:
        raise UserError(f"{run_dir / 'plan.json'}: missing {', '.join(missing)}")
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir}: no metrics.csv")
    with metrics_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "train_loss" not in rows[0]:
        raise UserError(f"{metrics_path}: empty or without a train_loss column")
    params, planned = float(plan["params"]), float(plan["tokens"])
    seen = [float(r["tokens_seen"]) for r in rows if r.get("tokens_seen")]
    if seen and seen[-1] < COMPLETE_FRACTION * planned:
        raise UserError(f"{run_dir}: incomplete run ({seen[-1]:.4g} of {planned:.4g} planned tokens); "
                        "its last loss is not a final loss")
    val = [r["val_loss"] for r in rows if r.get("val_loss")]
    if val:
        loss = _number(val[-1], metrics_path, len(rows) + 1, "val_loss")
    else:
        tail = [_number(r["train_loss"], metrics_path, i + 2, "train_loss")
                for i, r in enumerate(rows) if r.get("train_loss")][-TRAIN_LOSS_TAIL:]
        if not tail:
            raise UserError(f"{metrics_path}: no train_loss values")
        loss = float(np.mean(tail))
    return params, seen[-1] if seen else planned, loss
