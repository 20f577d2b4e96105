"""Results out: a plain-text table, a CSV that every run appends to (for comparing models), and runtime plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmtrain.eval.runtime import RuntimeResult


def flat(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys; lists become JSON text (one CSV cell)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def append_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append rows; when they bring new columns the file is rewritten with the union (old rows get blanks), so
    results of different runs and models stay in one comparable table."""
    path = Path(path)
    new = [flat(r) for r in rows]
    old: list[dict[str, Any]] = []
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, old = list(reader.fieldnames or []), list(reader)
    columns = list(header)
    for row in new:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    rewrite = columns != header
    with open(path, "w" if rewrite else "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        if rewrite:
            writer.writeheader()
            writer.writerows(old)
        writer.writerows(new)
    return path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Aligned text table; floats with 4 significant digits."""
    rows = [flat(r) for r in rows]
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plot_runtime(result: RuntimeResult, context_rows: Sequence[Mapping[str, float]], path: str | Path,
                 title: str = "") -> Path:
    """Two panels: decode tokens/s against context depth (measured and predicted), KV-cache bytes against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = [r["depth"] for r in context_rows]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    speed.plot(depths, [r["decode_tokens_per_s"] for r in context_rows], "o-", label="measured")
    if all("predicted_decode_tokens_per_s" in r for r in context_rows):
        speed.plot(depths, [r["predicted_decode_tokens_per_s"] for r in context_rows], "--", label="predicted")
    speed.set(xlabel="context depth (tokens)", ylabel="decode tokens/s", title="decode speed")
    speed.legend()
    memory.plot(depths, [r["kv_cache_bytes"] / 2**20 for r in context_rows], "o-")
    memory.axhline(result.weight_bytes / 2**20, color="gray", linestyle=":", label="weights")
    memory.set(xlabel="context depth (tokens)", ylabel="MiB", title="KV cache")
    memory.legend()
    fig.suptitle(title or f"{result.test} on {result.device}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
