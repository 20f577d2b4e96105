from __future__ import annotations

import pytest

from slmtrain.config import ConfigError
from slmtrain.eval.passkey import FILLER, KEY_SENTENCE, key_match, passkey_items, passkey_task
from slmtrain.eval.scoring import evaluate_task
from slmtrain.eval.tasks import load_task
from tests.eval.eval_helpers import tiny_model


def test_items_are_reproducible_fit_their_length_and_hold_the_key_once_at_its_depth(tokenizer):
    items = passkey_items(tokenizer, [400, 800], depths=(0.0, 0.5, 1.0), per_cell=3, seed=7)
    assert items == passkey_items(tokenizer, [400, 800], depths=(0.0, 0.5, 1.0), per_cell=3, seed=7)
    assert items != passkey_items(tokenizer, [400, 800], depths=(0.0, 0.5, 1.0), per_cell=3, seed=8)
    for item in items:
        assert item.prompt.count(item.key) == 2 and item.prompt.count(KEY_SENTENCE.format(key=item.key)) == 1
        assert 1 + len(tokenizer.encode(item.prompt)) <= item.length - 8  # room for the answer
        sentence = item.prompt.index(KEY_SENTENCE.format(key=item.key))
        before, after = item.prompt[:sentence].count(FILLER), item.prompt[sentence:].count(FILLER)
        assert before == round((before + after) * item.depth)
        assert before + after > 0
    longer = [i for i in items if i.length == 800][0]
    shorter = [i for i in items if i.length == 400][0]
    assert len(longer.prompt) > len(shorter.prompt) + 300  # the filler grows with the budget


def test_scored_by_length_and_depth_for_the_model_it_is_made_for(tokenizer):
    model = tiny_model(max_seq_len=1024)
    result = evaluate_task(model, tokenizer, load_task("passkey"))
    lengths = {group.split()[0] for group in result.by_group}
    assert lengths == {"length=256", "length=512", "length=1024"}  # 128 bytes cannot hold the instruction
    assert len(result.by_group) == 3 * 5 and result.n == 3 * 5 * 5 and result.truncated == 0
    assert key_match(" 12345.", "12345") == {"exact_match": 1.0}
    assert key_match(" 1234", "12345") == {"exact_match": 0.0}


def test_lengths_beyond_the_context_are_refused(tokenizer):
    with pytest.raises(ConfigError, match="exceed the model's context"):
        passkey_task(tokenizer, 512, lengths=[1024])
    with pytest.raises(ConfigError, match="need at least"):
        passkey_task(tokenizer, 128)
