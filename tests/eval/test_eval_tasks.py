from __future__ import annotations

import json

import pytest
import torch

from tests.eval.eval_helpers import BOS, EOS, tiny_model
from slmtrain.config import ConfigError, UserError
from slmtrain.eval import tasks
from slmtrain.eval.tasks import (encode_pair, evaluate_task, extract_number, fewshot_prefix, greedy_until,
                                 load_task, loglikelihoods, task_names)


def hand_loglikelihood(model, context: list[int], continuation: list[int]) -> float:
    ids = context + continuation
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
    return sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation))


def test_loglikelihoods_of_a_padded_batch_match_each_pair_alone(model, tokenizer):
    pairs = [encode_pair(tokenizer, "Question: why?\nAnswer:", " because"),
             encode_pair(tokenizer, "A", " much longer continuation than the others"),
             encode_pair(tokenizer, "", "x")]
    assert pairs[2] == ([BOS], [ord("x")])  # an empty context is conditioned on the prefix token alone
    results = loglikelihoods(model, pairs, batch_size=3)
    for (context, continuation), (ll, _) in zip(pairs, results):
        assert ll == pytest.approx(hand_loglikelihood(model, context, continuation), abs=1e-4)


def test_is_greedy_and_left_truncation(model):
    context = [BOS, 72, 105]
    greedy = model.generate(torch.tensor([context]), 4, temperature=0)[0, len(context):].tolist()
    (_, is_greedy), (_, not_greedy) = loglikelihoods(model, [(context, greedy), (context, [(greedy[0] + 1) % 256])])
    assert is_greedy and not not_greedy
    long_context = [BOS, *([65, 66, 67] * 60)]  # 181 tokens: more than max_seq_len = 128
    continuation = [68, 69]
    kept = (long_context + continuation)[-129:]  # 128 inputs + the last target
    [(ll, _)] = loglikelihoods(model, [(long_context, continuation)])
    assert ll == pytest.approx(hand_loglikelihood(model, kept[:-2], continuation), abs=1e-4)


def test_trailing_context_space_moves_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "Answer: ", "yes") == encode_pair(tokenizer, "Answer:", " yes")


def test_shipped_task_files_load_in_each_format():
    assert task_names() == ["arc-mini", "gsm8k-mini", "hellaswag-mini", "piqa-mini"]
    formats = {name: load_task(name) for name in task_names()}
    assert {n: (t.format, len(t.items)) for n, t in formats.items()} == {
        "arc-mini": ("arc", 5), "gsm8k-mini": ("gsm8k", 5), "hellaswag-mini": ("hellaswag", 5),
        "piqa-mini": ("piqa", 5)}
    arc = formats["arc-mini"].items
    assert arc[2].label == 2 and arc[2].choices[2] == "ice"  # answerKey "3" among labels "1", "2", "3"
    hellaswag = formats["hellaswag-mini"].items[3]
    assert "[" not in hellaswag.context and "How to water a plant. " in hellaswag.context
    assert formats["gsm8k-mini"].items[3].answer == "1200"


def test_bad_task_files_name_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n{broken\n")
    with pytest.raises(UserError, match="mine.jsonl:2"):
        load_task(path)
    path.write_text(json.dumps({"prompt": "unknown format"}) + "\n")
    with pytest.raises(UserError, match="match no task format"):
        load_task(path)
    with pytest.raises(ConfigError, match="piqa-mini"):
        load_task("no-such-task")


def test_multiple_choice_accuracy_matches_hand_scores(tokenizer):
    model = tiny_model(max_seq_len=512)  # one-shot prompts are longer than the default 128
    task = load_task("piqa-mini")
    result = evaluate_task(model, tokenizer, task, shots=1)
    correct = correct_norm = 0
    for index, item in enumerate(task.items):
        context = [BOS, *tokenizer.encode(fewshot_prefix(task, index, 1) + item.context)]
        scores = [hand_loglikelihood(model, context, tokenizer.encode(" " + c)) for c in item.choices]
        norm = [s / len(c) for s, c in zip(scores, item.choices)]
        correct += scores.index(max(scores)) == item.label
        correct_norm += norm.index(max(norm)) == item.label
    assert result.metrics == {"acc": correct / 5, "acc_norm": correct_norm / 5}
    assert result.items == 5 and result.shots == 1


def test_fewshot_prefix_uses_other_solved_items_reproducibly():
    task = load_task("arc-mini")
    prefix = fewshot_prefix(task, 0, 3)
    assert prefix == fewshot_prefix(task, 0, 3) and prefix.count("Question:") == 3
    assert task.items[0].context not in prefix
    assert prefix.endswith("\n\n") and all(" " + i.choices[i.label] in prefix
                                           for i in task.items if i.context in prefix)
    with pytest.raises(ConfigError, match="shots"):
        fewshot_prefix(task, 0, 5)


def test_extract_number():
    assert extract_number("so 100 * 12 = 1,200 dollars.\n#### 1,200") == "1200"
    assert extract_number("I think 3 then 7.") == "7"
    assert extract_number("it is 7.0") == "7"
    assert extract_number("costs 12.50") == extract_number("#### 12.5") == "12.5"
    assert extract_number("1000.00 total") == "1000" and extract_number("0.0") == "0"
    assert extract_number("no idea") is None


def test_greedy_until_matches_generate_and_stops(model, tokenizer):
    prompt = "Question: 2+2?\nAnswer:"
    ids = torch.tensor([[BOS, *tokenizer.encode(prompt)]])
    reference = tokenizer.decode(model.generate(ids, 12, temperature=0, eos_id=EOS)[0, ids.shape[1]:].tolist())
    assert greedy_until(model, tokenizer, prompt, max_new_tokens=12) == reference
    stop = reference[3:5]
    assert greedy_until(model, tokenizer, prompt, stop=[stop], max_new_tokens=12) == reference[: reference.index(stop)]


def test_generation_exact_match_counts_correct_final_numbers(model, tokenizer, monkeypatch):
    task = load_task("gsm8k-mini")
    outputs = iter([" 3 + 4 = 7.\n#### 7", " so 29", " 12 stickers", " #### 1,200", " nothing"])
    monkeypatch.setattr(tasks, "greedy_until", lambda *args, **kwargs: next(outputs))
    assert evaluate_task(model, tokenizer, task).metrics == {"exact_match": 3 / 5}
