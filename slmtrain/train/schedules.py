"""Learning-rate schedules as multipliers of the peak lr, stepped once per optimizer step."""

from __future__ import annotations

import math

from slmtrain.train.config import ScheduleConfig


def lr_multiplier(step: int, total_steps: int, schedule: ScheduleConfig, min_ratio: float) -> float:
    """Linear warmup to 1, then: ``constant``; ``cosine`` down to ``min_ratio`` at ``total_steps``; or ``wsd``
    (warmup-stable-decay): flat until the last ``decay_fraction`` of steps, then a linear, cosine or 1-sqrt decay."""
    warmup = min(schedule.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, round(schedule.decay_fraction * total_steps))
    decay_start = max(warmup, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    shape = {
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "1-sqrt": 1 - math.sqrt(progress),
    }[schedule.decay_shape]
    return min_ratio + (1 - min_ratio) * shape
