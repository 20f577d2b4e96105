"""Sardana, Portes, Doubov, Frankle, "Beyond Chinchilla-Optimal" (arXiv 2401.00448): the printed worked examples.

Each number below is checked to the precision it is printed with: the value we compute must round to the printed
figure, i.e. lie within half a unit of its last printed digit ("13.6B" -> 13.55e9..13.65e9, "28%" -> 27.5..28.5%).
The single exception is marked where it occurs.

How the paper sets the examples up, and how we follow it:

- Law: Chinchilla's A = 406.4, B = 410.7, E = 1.69, but alpha = 0.336 and beta = 0.283 in place of Hoffmann et al.'s
  rounded 0.34 / 0.28 (the paper's App. A footnote, after De Vries). The project's ``chinchilla`` set (0.34 / 0.28)
  does not reproduce the examples: at 30B quality and 1e13 inference tokens it gives 15.9B parameters, 2.21x the
  data and a 18% saving against the printed 13.6B, 2.84x and 28%.
- "X-Chinchilla quality": the loss of the Chinchilla-optimal model with X parameters under that same law, i.e. D on
  the compute-optimal frontier (alpha A N^-alpha = beta B D^-beta), not 20 tokens per parameter. The paper's
  "70B-Chinchilla model (4.26T training tokens)" confirms this.
- FLOPs: 6 N per training token, 2 N per inference token; savings are against the Chinchilla-style model of that
  quality serving the same demand.
- Dollars (paper's Eq. 6: 6 N D_tr C_tr / MFU_tr + 2 N C_inf (D_inp / MFU_inp + D_out / MFU_out)): training and prompt
  MFU 50%, generated-token MFU 1%, requests of 70 prompt + 215 generated tokens (LMSYS-Chat means). This is exactly
  :class:`CostModel`. The optimum and the savings depend only on the ratio of inference to training dollars per peak
  FLOP. The three printed cost examples (seven printed numbers) are all reproduced to their rounding only for a ratio
  in [0.328, 0.329]; we use 0.3285. That ratio is inferred from the examples, not printed: at training $1.50/h on a
  312 TFLOP/s A100 it corresponds to about $0.99/h for an INT8 A100 at 624 TOP/s. The settings quoted in secondary
  summaries of the paper ($1.10/h, ratio 0.367) give 15.7B / 3.51T / 19.0% instead of 16B / 3.35T / 17%.

The primary text of the paper's body was not reachable from the reference store (only the pages' openings are kept);
the printed figures were taken from notes that quote it with section numbers (Fig. 1, Sec. 2, Sec. 6 / Sec. 3 in v1,
App. B Tables 2-3), and agree with one another.
"""

from __future__ import annotations

import pytest

from slmtrain.scaling.budget import Allocation, CostModel, inference_optimal
from slmtrain.scaling.laws import PUBLISHED

SARDANA = PUBLISHED["sardana"]

PROMPT_TOKENS, GENERATED_TOKENS = 70, 215  # per request (LMSYS-Chat means, as in the paper)
A100_BF16 = 312e12
# Inference dollars per peak FLOP = 0.3285 x training's (see the module docstring): training $1.50/h at 312 TFLOP/s.
PAPER_COST = CostModel(peak_flops=A100_BF16, train_mfu=0.5, prefill_mfu=0.5, decode_mfu=0.01,
                       train_price_per_hour=1.50, inference_price_per_hour=0.3285 * 1.50)


def assert_printed(value: float, printed: float, unit: float, what: str) -> None:
    """``value`` rounds to ``printed`` when printed to a last digit worth ``unit``."""
    assert abs(value - printed) <= unit / 2 * (1 + 1e-9), f"{what}: computed {value:.6g}, printed {printed:g}"


def chinchilla_quality(params: float) -> tuple[float, float]:
    """(tokens, loss) of the Chinchilla-optimal model with ``params`` parameters under the paper's law."""
    tokens = SARDANA.compute_optimal_tokens(params)
    return tokens, SARDANA.loss(params, tokens)


def flops_example(params: float, inference_tokens: float) -> tuple[Allocation, float, float, float]:
    """(FLOP optimum, Chinchilla tokens, FLOPs saved, fraction saved) against the Chinchilla-style model."""
    tokens, loss = chinchilla_quality(params)
    best = inference_optimal(SARDANA, loss, inference_tokens)
    assert SARDANA.loss(best.params, best.tokens) == pytest.approx(loss, rel=1e-10)
    chinchilla_flops = 6 * params * tokens + 2 * params * inference_tokens
    return best, tokens, chinchilla_flops - best.lifetime_flops, 1 - best.lifetime_flops / chinchilla_flops


# ------------------------------------------------------------------------------------------------ FLOPs
def test_7b_quality_with_1e11_inference_tokens() -> None:
    # Sec. 2: "7B-Chinchilla-quality model with an inference demand of 10^11 tokens ... train a 6B parameter model on
    # 1.18x the original (Chinchilla-prescribed) amount of data".
    best, tokens, _, _ = flops_example(7e9, 1e11)
    assert_printed(best.params, 6e9, 1e9, "parameters")
    assert_printed(best.tokens / tokens, 1.18, 0.01, "data ratio")


def test_13b_quality_with_2t_inference_tokens() -> None:
    # Fig. 1: a 13B Chinchilla model serving 2T tokens vs a 7B model on more data: saves 1.7e22 FLOPs (17%).
    best, _, saved, saving = flops_example(13e9, 2e12)
    assert_printed(best.params, 7e9, 1e9, "parameters")
    assert_printed(saved, 1.7e22, 0.1e22, "FLOPs saved")
    assert_printed(100 * saving, 17, 1, "saving %")


def test_30b_quality_with_1e13_inference_tokens() -> None:
    # Sec. 2: 30B-Chinchilla quality, 10^13 inference tokens: a 13.6B model on 2.84x the data, 28% fewer FLOPs.
    best, tokens, _, saving = flops_example(30e9, 1e13)
    assert_printed(best.params, 13.6e9, 0.1e9, "parameters")
    assert_printed(best.tokens / tokens, 2.84, 0.01, "data ratio")
    assert_printed(100 * saving, 28, 1, "saving %")


def test_70b_quality_with_10t_inference_tokens() -> None:
    # App. B Table 2: 70B-Chinchilla model (4.26T training tokens), 10T inference tokens: 41.6B parameters on 7.92T
    # tokens, 12% fewer FLOPs.
    best, tokens, _, saving = flops_example(70e9, 1e13)
    # Exception: we get 4.2547T, which prints as 4.25T; allowed one unit of the last digit (0.13% relative).
    assert_printed(tokens, 4.26e12, 2 * 0.01e12, "Chinchilla tokens")
    assert_printed(best.params, 41.6e9, 0.1e9, "parameters")
    assert_printed(best.tokens, 7.92e12, 0.01e12, "tokens")
    assert_printed(100 * saving, 12, 1, "saving %")


# ------------------------------------------------------------------------------------------------ dollars
def cost_example(params: float, requests: float) -> tuple[Allocation, Allocation, float, float]:
    """(cost optimum, FLOP optimum, Chinchilla-style model's dollars, its FLOPs) for ``requests`` requests."""
    tokens, loss = chinchilla_quality(params)
    prompt, generated = PROMPT_TOKENS * requests, GENERATED_TOKENS * requests
    best = inference_optimal(SARDANA, loss, generated, prompt, cost=PAPER_COST)
    flop_best = inference_optimal(SARDANA, loss, generated + prompt)
    chinchilla = inference_optimal(SARDANA, loss, 0.0)  # the Chinchilla-style model, priced for the same demand
    assert chinchilla.params == pytest.approx(params, rel=1e-9) and chinchilla.tokens == pytest.approx(tokens, rel=1e-9)
    chinchilla_cost = (params * tokens * 6 * PAPER_COST.dollars_per_flop("train")
                       + 2 * params * prompt * PAPER_COST.dollars_per_flop("prefill")
                       + 2 * params * generated * PAPER_COST.dollars_per_flop("decode"))
    chinchilla_flops = 6 * params * tokens + 2 * params * (prompt + generated)
    return best, flop_best, chinchilla_cost, chinchilla_flops


def test_30b_quality_with_1_5b_requests_cost() -> None:
    # Sec. 6 (Sec. 3 in v1): 30B-Chinchilla quality, 1.5B requests: a 16B model on 3.35T tokens costs 17% less.
    best, _, chinchilla_cost, _ = cost_example(30e9, 1.5e9)
    assert_printed(best.params, 16e9, 1e9, "parameters")
    assert_printed(best.tokens, 3.35e12, 0.01e12, "tokens")
    assert_printed(100 * (1 - best.cost / chinchilla_cost), 17, 1, "saving %")


def test_70b_quality_with_2t_inference_tokens_flops_vs_cost() -> None:
    # Sec. 6: at 2T inference tokens (7.02B requests of 285 tokens) the Chinchilla-70B model needs 1.3% more FLOPs
    # than the FLOP-optimal model but costs 36% more than the cost-optimal one.
    requests = 2e12 / (PROMPT_TOKENS + GENERATED_TOKENS)
    assert_printed(requests, 7.02e9, 0.01e9, "requests")
    best, flop_best, chinchilla_cost, chinchilla_flops = cost_example(70e9, requests)
    assert_printed(100 * (chinchilla_flops / flop_best.lifetime_flops - 1), 1.3, 0.1, "extra FLOPs %")
    assert_printed(100 * (chinchilla_cost / best.cost - 1), 36, 1, "extra cost %")


def test_70b_quality_with_35_1b_requests_cost() -> None:
    # App. B Table 3: 70B-Chinchilla quality, 35.1B requests: 21.5B parameters on 27T tokens, 54% savings.
    best, _, chinchilla_cost, _ = cost_example(70e9, 35.1e9)
    assert_printed(best.params, 21.5e9, 0.1e9, "parameters")
    assert_printed(best.tokens, 27e12, 1e12, "tokens")
    assert_printed(100 * (1 - best.cost / chinchilla_cost), 54, 1, "saving %")
