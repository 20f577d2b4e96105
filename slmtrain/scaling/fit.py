"""Fitting L(N, D) = E + A/N^alpha + B/D^beta to training runs.

- ``chinchilla``: Hoffmann et al. 2022 Approach 3. Parametrise log L = LSE(a - alpha log N, b - beta log D, e) with
  A = e^a, B = e^b, E = e^e, minimise the summed Huber loss (delta 1e-3) of the log-loss residuals with L-BFGS from
  their grid of initialisations, and keep the best. Summing (not averaging) the Huber terms matters: Besiroglu et al.
  2024 traced the original fit's bias to an optimiser stopped early by a tiny loss scale.
- ``epoch``: Besiroglu et al.'s maximum likelihood with a Huber-shaped residual density of free scale sigma:
  -log p(r) = huber(r / sigma) + log Z(delta) + log sigma; started from the Approach 3 optimum.
- ``isoflop_fit``: Approach 2, a parabola in log N per IsoFLOP group, then power laws N_opt(C), D_opt(C).
- bootstrap confidence intervals: refits on runs resampled with replacement.

Speed: every start of the grid (4,500 for Hoffmann's) is optimised at once by a batched L-BFGS over (starts x runs)
arrays with analytic gradients (after a short burn-in only the best tenth of the starts continues), then the best
start is polished with scipy's L-BFGS-B. Bootstrap refits are a batch
of the same problem with per-run multiplicities as weights.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

from slmtrain.config import UserError, check_choice
from slmtrain.scaling.laws import LAW_KEYS, ScalingLaw
from slmtrain.scaling.runs import Runs

FIT_METHODS = ("chinchilla", "epoch")
HUBER_DELTA = 1e-3
GRID_BURN_IN = 30  # L-BFGS iterations every grid start gets before the best tenth continues
# Hoffmann et al.'s grid of initialisations for (a, b, e, alpha, beta).
INIT_GRID = (np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
             np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))

# (theta (K, p), weights (K, M)) -> (objective (K,), gradient (K, p))
Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class FitResult:
    law: ScalingLaw
    method: str
    objective: float
    n_runs: int
    starts: int
    seconds: float
    sigma: float | None = None  # epoch: fitted residual scale (log-loss units)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap percentile intervals
    bootstrap_samples: int = 0

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.law.constants())
        out.update(method=self.method, objective=self.objective, n_runs=self.n_runs, starts=self.starts,
                   seconds=round(self.seconds, 3))
        if self.sigma is not None:
            out["sigma"] = self.sigma
        if self.intervals:
            out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
            out["bootstrap_samples"] = self.bootstrap_samples
        return out


# ------------------------------------------------------------------------------------------------ objectives
def _log_prediction(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """LSE(a - alpha log N, b - beta log D, e) for each row of theta, and the softmax weights of its three terms."""
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    params_term, data_term = a - alpha * log_n, b - beta * log_d  # (K, M)
    top = np.maximum(np.maximum(params_term, data_term), e)
    exp_n, exp_d, exp_e = np.exp(params_term - top), np.exp(data_term - top), np.exp(e - top)
    total = exp_n + exp_d + exp_e
    return top + np.log(total), (exp_n / total, exp_d / total, exp_e / total)


def _prediction_gradient(psi: np.ndarray, softmax: tuple[np.ndarray, np.ndarray, np.ndarray], log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """sum_m psi_m * d(log prediction_m)/d(a, b, e, alpha, beta)."""
    wa, wb, we = psi * softmax[0], psi * softmax[1], psi * softmax[2]
    return np.stack([wa.sum(1), wb.sum(1), we.sum(1), -(wa * log_n).sum(1), -(wb * log_d).sum(1)], axis=1)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative."""
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)), np.clip(r, -delta, delta)


def huber_objective(runs: Runs, delta: float = HUBER_DELTA) -> Objective:
    """Approach 3: sum over runs of Huber_delta(log prediction - log loss)."""
    log_n, log_d, log_l = np.log(runs.params), np.log(runs.tokens), np.log(runs.loss)

    def objective(theta: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_pred, softmax = _log_prediction(theta, log_n, log_d)
        loss, psi = _huber(log_pred - log_l, delta)
        return (weights * loss).sum(1), _prediction_gradient(weights * psi, softmax, log_n, log_d)

    return objective


def huber_log_normaliser(delta: float) -> float:
    """log of the integral of exp(-huber_delta(x)) over the real line."""
    return math.log(math.sqrt(2 * math.pi) * (1 - 2 * norm.sf(delta)) + 2 * math.exp(-0.5 * delta**2) / delta)


def huber_likelihood_objective(runs: Runs, delta: float = HUBER_DELTA) -> Objective:
    """Epoch: negative log-likelihood of the log-loss residuals under a Huber density of scale e^s; theta[:, 5] = s."""
    log_n, log_d, log_l = np.log(runs.params), np.log(runs.tokens), np.log(runs.loss)
    log_z = huber_log_normaliser(delta)

    def objective(theta: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_pred, softmax = _log_prediction(theta[:, :5], log_n, log_d)
        sigma = np.exp(theta[:, 5:6])
        scaled = (log_pred - log_l) / sigma
        loss, psi = _huber(scaled, delta)
        value = (weights * (loss + log_z + theta[:, 5:6])).sum(1)
        grad_model = _prediction_gradient(weights * psi / sigma, softmax, log_n, log_d)
        grad_scale = (weights * (1.0 - psi * scaled)).sum(1, keepdims=True)
        return value, np.concatenate([grad_model, grad_scale], axis=1)

    return objective


# ------------------------------------------------------------------------------------------------ optimisers
def batched_lbfgs(objective: Objective, theta: np.ndarray, weights: np.ndarray, max_iter: int = 500,
                  history: int = 10, ftol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS on K independent problems at once (rows of theta), each with its own curvature history and its own
    backtracking (Armijo) line search. Returns the final points and objective values."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite trial steps are rejected
        return _batched_lbfgs(objective, theta, weights, max_iter, history, ftol)


def _batched_lbfgs(objective: Objective, theta: np.ndarray, weights: np.ndarray, max_iter: int, history: int,
                   ftol: float) -> tuple[np.ndarray, np.ndarray]:
    x = theta.astype(float).copy()
    k, p = x.shape
    f, g = objective(x, weights)
    s_hist, y_hist, rho = np.zeros((k, history, p)), np.zeros((k, history, p)), np.zeros((k, history))
    active = np.isfinite(f)
    for _ in range(max_iter):
        if not active.any():
            break
        # Two-loop recursion, newest pair last; empty slots have rho = 0 and drop out.
        q = g.copy()
        coef = np.zeros((k, history))
        for j in reversed(range(history)):
            coef[:, j] = rho[:, j] * np.einsum("kp,kp->k", s_hist[:, j], q)
            q -= coef[:, j : j + 1] * y_hist[:, j]
        yy = np.einsum("kp,kp->k", y_hist[:, -1], y_hist[:, -1])
        gamma = np.where(rho[:, -1] > 0, 1.0 / np.maximum(rho[:, -1] * yy, 1e-300), 1.0 / np.maximum(np.abs(g).max(1), 1e-12))
        r = gamma[:, None] * q
        for j in range(history):
            beta = rho[:, j] * np.einsum("kp,kp->k", y_hist[:, j], r)
            r += s_hist[:, j] * (coef[:, j] - beta)[:, None]
        direction = -r
        slope = np.einsum("kp,kp->k", g, direction)
        not_descent = slope >= 0  # stale curvature: restart from steepest descent
        direction[not_descent] = -g[not_descent]
        slope[not_descent] = -np.einsum("kp,kp->k", g[not_descent], g[not_descent])

        step = np.ones(k)
        accepted = ~active
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        for _ in range(40):
            todo = np.flatnonzero(~accepted)
            if todo.size == 0:
                break
            trial = x[todo] + step[todo, None] * direction[todo]
            f_trial, g_trial = objective(trial, weights[todo] if weights.shape[0] == k else weights)
            ok = np.isfinite(f_trial) & (f_trial <= f[todo] + 1e-4 * step[todo] * slope[todo])
            x_new[todo[ok]], f_new[todo[ok]], g_new[todo[ok]] = trial[ok], f_trial[ok], g_trial[ok]
            accepted[todo[ok]] = True
            step[todo[~ok]] *= 0.5
        stalled = ~accepted  # no decrease found along the direction: a (numerical) minimum
        s, y = x_new - x, g_new - g
        sy = np.einsum("kp,kp->k", s, y)
        s_hist, y_hist, rho = np.roll(s_hist, -1, 1), np.roll(y_hist, -1, 1), np.roll(rho, -1, 1)
        good = sy > 1e-18
        s_hist[:, -1], y_hist[:, -1] = s * good[:, None], y * good[:, None]
        rho[:, -1] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        converged = np.abs(f - f_new) <= ftol * np.maximum(np.abs(f_new), 1e-12)
        x, f, g = x_new, f_new, g_new
        active &= ~(stalled | converged)
    return x, f


def _polish(objective: Objective, theta: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """scipy L-BFGS-B from one point with tight tolerances (the Huber objective is nearly L1: flat gradients)."""

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(x[None, :], weights[None, :])
        return float(value[0]), grad[0]

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = minimize(fg, theta, jac=True, method="L-BFGS-B",
                          options={"maxiter": 5000, "maxcor": 20, "ftol": 1e-15, "gtol": 1e-12})
    return result.x, float(result.fun)


# ------------------------------------------------------------------------------------------------ public API
def initial_grid() -> np.ndarray:
    return np.array(list(itertools.product(*INIT_GRID)))


def fit(runs: Runs, method: str = "chinchilla", bootstrap: int = 0, seed: int = 0,
        delta: float = HUBER_DELTA) -> FitResult:
    """Fit the five constants (Approach 3 or Epoch's MLE), optionally with bootstrap percentile 95% intervals."""
    check_choice("method", method, FIT_METHODS)
    n_params = 5 if method == "chinchilla" else 6
    if len(runs) <= n_params:
        raise UserError(f"fewer runs than parameters: {len(runs)} runs cannot determine the {n_params} parameters "
                        f"of method {method!r}; need at least {n_params + 1}")
    started = time.perf_counter()
    weights = np.ones(len(runs))
    objective = huber_objective(runs, delta)
    grid = initial_grid()
    # Successive halving: every start gets a short run; only the most promising tenth is run to convergence.
    theta, values = batched_lbfgs(objective, grid, weights[None, :], max_iter=GRID_BURN_IN)
    promising = np.argsort(np.where(np.isfinite(values), values, np.inf))[: max(len(grid) // 10, 1)]
    theta, values = batched_lbfgs(objective, theta[promising], weights[None, :])
    best, value = _polish(objective, theta[np.nanargmin(values)], weights)
    sigma = None
    if method == "epoch":
        objective = huber_likelihood_objective(runs, delta)
        residual = np.log(runs.loss) - _log_prediction(best[None, :], np.log(runs.params), np.log(runs.tokens))[0][0]
        start = np.append(best, math.log(max(float(np.mean(np.abs(residual))), 1e-8)))
        best, value = _polish(objective, start, weights)
        sigma = math.exp(best[5])
    law = _law_from_theta(best, method)
    result = FitResult(law, method, value, len(runs), len(grid), 0.0, sigma)
    if bootstrap:
        result.intervals = _bootstrap(objective, best, len(runs), bootstrap, seed)
        result.bootstrap_samples = bootstrap
    result.seconds = time.perf_counter() - started
    return result


def _law_from_theta(theta: np.ndarray, method: str) -> ScalingLaw:
    a, b, e, alpha, beta = (float(v) for v in theta[:5])
    if alpha <= 0 or beta <= 0:
        raise UserError(f"degenerate fit: alpha={alpha:.4g}, beta={beta:.4g} (need both positive); the runs do not "
                        "vary N and D enough to separate the two terms")
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                      name=f"fit-{method}", source=f"fitted ({method})")


def _bootstrap(objective: Objective, best: np.ndarray, n_runs: int, samples: int, seed: int
               ) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals from refits on resampled runs, each resample a row of multiplicities."""
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n_runs, n_runs), minlength=n_runs) for _ in range(samples)])
    theta, _ = batched_lbfgs(objective, np.tile(best, (samples, 1)), counts.astype(float), max_iter=1000)
    constants = np.column_stack([np.exp(theta[:, 2]), np.exp(theta[:, 0]), np.exp(theta[:, 1]), theta[:, 3], theta[:, 4]])
    low, high = np.percentile(constants, [2.5, 97.5], axis=0)
    return {key: (float(lo), float(hi)) for key, lo, hi in zip(LAW_KEYS, low, high)}


# ------------------------------------------------------------------------------------------------ Approach 2
@dataclass
class IsoFlopFit:
    """Approach 2: per-group parabola minima, and N_opt = k_n C^a, D_opt = k_d C^b fitted through them."""

    group_flops: np.ndarray
    group_params: np.ndarray  # N at each parabola's minimum
    a: float
    b: float
    log_kn: float
    log_kd: float

    def optimal(self, flops: float) -> tuple[float, float]:
        return math.exp(self.log_kn) * flops**self.a, math.exp(self.log_kd) * flops**self.b

    def to_dict(self) -> dict[str, object]:
        return {"a": self.a, "b": self.b, "groups": [{"flops": float(c), "params": float(n), "tokens": float(c / (6 * n))}
                                                     for c, n in zip(self.group_flops, self.group_params)]}


def isoflop_groups(runs: Runs, tolerance: float = 0.05) -> list[np.ndarray]:
    """Indices of runs whose compute 6ND agrees within ``tolerance`` (relative) and that span >= 3 model sizes."""
    order = np.argsort(runs.flops)
    log_c = np.log(runs.flops[order])
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or log_c[i] - log_c[start] > math.log1p(tolerance):
            members = order[start:i]
            if len(np.unique(runs.params[members])) >= 3:
                groups.append(members)
            start = i
    return groups


def isoflop_fit(runs: Runs, tolerance: float = 0.05) -> IsoFlopFit:
    """Approach 2. Needs >= 2 IsoFLOP groups whose parabola (in log N) opens upwards with its vertex inside the
    sampled range; other groups are skipped (a vertex outside the range is an extrapolation, not a measurement)."""
    flops, params = [], []
    for members in isoflop_groups(runs, tolerance):
        x, y = np.log(runs.params[members]), runs.loss[members]
        c2, c1, _ = np.polyfit(x, y, 2)
        vertex = -c1 / (2 * c2) if c2 > 0 else math.inf
        if x.min() <= vertex <= x.max():
            flops.append(float(np.exp(np.mean(np.log(runs.flops[members])))))
            params.append(math.exp(vertex))
    if len(flops) < 2:
        raise UserError(f"Approach 2 needs at least 2 IsoFLOP groups (runs with equal 6ND within {tolerance:.0%}, "
                        f">= 3 sizes, a loss minimum inside the sampled sizes); found {len(flops)}")
    log_c, log_n = np.log(flops), np.log(params)
    a, log_kn = np.polyfit(log_c, log_n, 1)
    b, log_kd = np.polyfit(log_c, log_c - math.log(6) - log_n, 1)
    return IsoFlopFit(np.array(flops), np.array(params), float(a), float(b), float(log_kn), float(log_kd))
