"""The threshold's guarantee, checked by simulation on a population whose quality curve is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from slmtrain.collab.calibration import GRID, calibrate_threshold, certifies, cloud_quality_lower, examples_needed
from slmtrain.config import UserError

CLOUD = 0.9  # cloud accuracy; the local model is right with probability equal to its score


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = rng.uniform(size=n)
    return scores, rng.uniform(size=n) < scores, rng.uniform(size=n) < CLOUD


def population_quality(threshold: float) -> float:
    """Queries scored below t go to the cloud (right with CLOUD), the rest stay local (right with p = score)."""
    t = min(threshold, 1.0)
    return CLOUD * t + (1 - t * t) / 2


def test_the_guarantee_holds_at_the_stated_confidence_and_still_saves_calls():
    rng = np.random.default_rng(0)
    target, confidence, trials = 0.95, 0.9, 300
    chosen = [calibrate_threshold(*draw(300, rng), target, confidence) for _ in range(trials)]
    violations = np.mean([population_quality(c.threshold) < target * CLOUD for c in chosen])
    assert violations <= 1 - confidence
    assert np.mean([c.cloud_fraction for c in chosen]) < 0.9  # a guarantee bought by sending everything is useless


def test_the_kept_threshold_is_the_last_one_certified():
    scores, local, cloud = draw(500, np.random.default_rng(1))
    result = calibrate_threshold(scores, local, cloud, 0.95, 0.95)
    following = GRID[list(GRID).index(result.threshold) + 1]
    losses = int((scores >= following)[cloud & ~local].sum())
    budget = (1 - 0.95) * cloud_quality_lower(int(cloud.sum()), 500, 0.025)
    assert result.losses <= budget * 500 and not certifies(losses, 500, budget, 0.025)
    assert result.quality == pytest.approx(np.where(scores < result.threshold, cloud, local).mean())


def test_too_small_a_calibration_set_says_how_many_examples_are_needed():
    needed = examples_needed(1.0, 0.95, 0.95)
    assert 70 < needed < 80  # (1 - 0.05 x lower bound)^n <= 0.025
    everyone_right = np.ones(needed - 1, bool)
    with pytest.raises(UserError, match=f"needs at least {needed}"):
        calibrate_threshold(np.ones(needed - 1), everyone_right, everyone_right, 0.95, 0.95)
    result = calibrate_threshold(np.ones(needed), np.ones(needed, bool), np.ones(needed, bool), 0.95, 0.95)
    assert result.cloud_fraction == 0.0  # a local model that is always right keeps everything local
    with pytest.raises(UserError, match="right on none"):
        calibrate_threshold(np.ones(200), np.ones(200, bool), np.zeros(200, bool), 0.95, 0.95)
