"""The routing threshold, chosen with a guarantee (Learn-then-Test, Angelopoulos et al. 2021, with binomial tests).

A query goes to the cloud when the router's score (its estimate that the local answer is right) is below a threshold
t. Wanted: quality(t) >= target x quality(cloud only), at the lowest cloud-call rate. The quality lost by answering a
query locally is at most the rate L(t) of queries answered locally that the cloud gets right and the local model gets
wrong, so the requirement holds whenever L(t) <= (1 - target) x quality(cloud). On a calibration split of n examples:

1. A Clopper-Pearson lower bound on the cloud's quality, at level delta / 2 (delta = 1 - confidence).
2. Thresholds from "all cloud" down to "all local" on a fixed grid, each tested in turn (fixed-sequence testing):
   H0(t): L(t) > (1 - target) x bound, rejected when the binomial probability of seeing at most the observed number
   of such losses is <= delta / 2. The first threshold not rejected ends the sequence; the last rejected one is kept.

With probability >= confidence over the draw of the calibration set, the kept threshold meets the requirement on the
distribution the set was drawn from (a union bound over the two steps; the losses grow monotonically down the grid,
so fixed-sequence testing needs no multiplicity correction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta, binom

from slmtrain.config import UserError

# Route to the cloud when score < threshold. Scores lie in [0, 1]: the first threshold sends everything (valid by
# construction), the last (0) nothing.
GRID = np.concatenate(([np.nextafter(1.0, 2.0)], np.linspace(1.0, 0.0, 201)))


@dataclass
class Calibration:
    threshold: float  # route to the cloud when the router's score is below it
    target: float  # the quality kept, as a fraction of cloud-only quality
    confidence: float  # probability (over the calibration draw) that the guarantee holds
    examples: int  # calibration examples
    cloud_quality: float  # observed on the calibration split
    cloud_quality_lower: float  # its lower confidence bound (level (1 - confidence) / 2)
    local_quality: float  # observed on the calibration split
    losses: int  # calibration examples kept local that the cloud gets right and the local model gets wrong
    cloud_fraction: float  # share of calibration examples the threshold sends to the cloud
    quality: float  # quality of the routed answers on the calibration split

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def cloud_quality_lower(successes: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a success rate: exceeded with probability <= alpha."""
    return 0.0 if successes == 0 else float(beta.ppf(alpha, successes, n - successes + 1))


def certifies(losses: int, n: int, budget: float, alpha: float) -> bool:
    """Whether ``losses`` out of ``n`` rejects "the loss rate exceeds ``budget``" at level ``alpha``."""
    return float(binom.cdf(losses, n, budget)) <= alpha


def examples_needed(cloud_quality: float, target: float, confidence: float) -> int:
    """The fewest calibration examples with which a local answer can be certified at all (no losses observed, cloud
    quality as observed): fewer, and every threshold but "all cloud" is rejected whatever the router does."""
    alpha = (1 - confidence) / 2

    def enough(n: int) -> bool:
        budget = (1 - target) * cloud_quality_lower(round(cloud_quality * n), n, alpha)
        return budget > 0 and certifies(0, n, budget, alpha)

    high = 1
    while not enough(high):
        high *= 2
        if high > 1 << 30:
            raise UserError(f"no calibration set is large enough for target={target} at confidence={confidence} "
                            f"with a cloud quality of {cloud_quality:.3f}")
    low = high // 2  # enough(low) is false (or low is 0); bisect to the first n that is enough
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def require_enough_examples(cloud_correct: np.ndarray, target: float, confidence: float) -> None:
    """A clear error, naming the size needed, when no threshold but "all cloud" could be certified."""
    n = len(cloud_correct)
    if not np.any(cloud_correct):
        raise UserError(f"the cloud is right on none of the {n} calibration examples: no cloud quality to keep")
    cloud_quality = float(np.mean(cloud_correct))
    needed = examples_needed(cloud_quality, target, confidence)
    if n < needed:
        raise UserError(f"the calibration split has {n} examples; target={target} at confidence={confidence} with "
                        f"a cloud quality of {cloud_quality:.3f} needs at least {needed}")


def calibrate_threshold(scores: np.ndarray, local_correct: np.ndarray, cloud_correct: np.ndarray, target: float,
                        confidence: float) -> Calibration:
    """The lowest-cloud-rate threshold on ``GRID`` that the fixed-sequence test certifies (see the module doc)."""
    scores, local_correct, cloud_correct = np.asarray(scores), np.asarray(local_correct, bool), np.asarray(cloud_correct, bool)
    require_enough_examples(cloud_correct, target, confidence)
    n, cloud_quality = len(scores), float(cloud_correct.mean())
    alpha = (1 - confidence) / 2
    lower = cloud_quality_lower(int(cloud_correct.sum()), n, alpha)
    budget = (1 - target) * lower
    lossy = scores[cloud_correct & ~local_correct]
    losses = np.concatenate(([0], (lossy[None, :] >= GRID[1:, None]).sum(axis=1)))  # per threshold, kept local
    rejected = np.concatenate(([True], binom.cdf(losses[1:], n, budget) <= alpha))
    last = int(np.argmin(rejected)) - 1 if not rejected.all() else len(GRID) - 1  # the sequence ends at a failure
    chosen, chosen_losses = GRID[last], int(losses[last])
    to_cloud = scores < chosen
    routed = np.where(to_cloud, cloud_correct, local_correct)
    return Calibration(threshold=float(chosen), target=target, confidence=confidence, examples=n,
                       cloud_quality=cloud_quality, cloud_quality_lower=lower, local_quality=float(local_correct.mean()),
                       losses=chosen_losses, cloud_fraction=float(to_cloud.mean()), quality=float(routed.mean()))
