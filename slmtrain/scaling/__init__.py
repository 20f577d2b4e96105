"""Scaling laws: fit L(N, D) to runs, choose model size and tokens for a budget, a lifetime and a device."""

from slmtrain.scaling.budget import (CostModel, Decision, choose_tokens, compute_optimal, inference_optimal,
                                     loss_targeted)
from slmtrain.scaling.laws import PUBLISHED, ScalingLaw, law_from_options, load_law
from slmtrain.scaling.runs import Runs, read_runs

__all__ = ["PUBLISHED", "CostModel", "Decision", "Runs", "ScalingLaw", "choose_tokens", "compute_optimal",
           "inference_optimal", "law_from_options", "load_law", "loss_targeted", "read_runs"]
