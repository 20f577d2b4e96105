"""Fit diagnostics: the fitted law over the data, iso-loss contours, and the compute-optimal frontier."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slmtrain.scaling.laws import ScalingLaw  # noqa: E402
from slmtrain.scaling.runs import Runs  # noqa: E402

SIZE_BINS = 6


def plot_fit(law: ScalingLaw, runs: Runs, path: str | Path) -> Path:
    """Left: loss against tokens, runs coloured by size, with the law's curve at each size bin's median N.
    Right: iso-loss contours over (C, N), the runs, and the compute-optimal frontier N_opt(C)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    log_n = np.log10(runs.params)
    edges = np.linspace(log_n.min(), log_n.max() + 1e-9, SIZE_BINS + 1)
    colours = plt.cm.viridis(np.linspace(0, 1, SIZE_BINS))
    tokens = np.logspace(np.log10(runs.tokens.min()) - 0.2, np.log10(runs.tokens.max()) + 0.2, 200)
    for i in range(SIZE_BINS):
        members = (log_n >= edges[i]) & (log_n < edges[i + 1])
        if not members.any():
            continue
        n = float(np.median(runs.params[members]))
        left.scatter(runs.tokens[members], runs.loss[members], s=12, color=colours[i])
        left.plot(tokens, law.loss(n, tokens), color=colours[i], label=f"N ~ {n:.3g}")
    left.set(xscale="log", xlabel="training tokens D", ylabel="loss", title=f"{law.name}: fitted curves")
    left.legend(fontsize=8)

    flops = np.logspace(np.log10(runs.flops.min()) - 0.5, np.log10(runs.flops.max()) + 1.0, 200)
    params = np.logspace(np.log10(runs.params.min()) - 0.5, np.log10(runs.params.max()) + 0.5, 200)
    grid_c, grid_n = np.meshgrid(flops, params)
    contours = right.contour(grid_c, grid_n, law.loss(grid_n, grid_c / (6 * grid_n)),
                             levels=np.linspace(0.95 * runs.loss.min(), runs.loss.max(), 12), cmap="magma")
    right.clabel(contours, fontsize=7)
    right.scatter(runs.flops, runs.params, c=runs.loss, s=10, cmap="magma", edgecolors="k", linewidths=0.3,
                  vmin=0.95 * runs.loss.min(), vmax=runs.loss.max())
    right.plot(flops, [law.compute_optimal(c)[0] for c in flops], "b--", label="compute-optimal N(C)")
    right.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="parameters N",
              title="iso-loss contours and frontier")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
