from __future__ import annotations

import json
from types import SimpleNamespace

import torch

import pytest

from tests.eval.eval_helpers import BOS
from slmtrain.config import UserError
from slmtrain.eval.harness import SlmtrainLM, run_harness
from slmtrain.eval.scoring import encode_pair, evaluate_task, greedy_until, loglikelihoods
from slmtrain.eval.tasks import load_task
from tests.eval.eval_helpers import FIXTURES

PIQA_YAML = """task: piqa_local
dataset_path: json
dataset_kwargs:
  cache_dir: {cache}
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_a_local_harness_task_runs_offline_and_agrees_with_slmtrain_scoring(model, tokenizer, tmp_path):
    yaml = PIQA_YAML.format(data=FIXTURES / "piqa-mini.jsonl", cache=tmp_path / "cache")
    (tmp_path / "piqa_local.yaml").write_text(yaml)
    out = run_harness(model, tokenizer, ["piqa_local"], include_path=tmp_path, log_samples=True)
    samples = out["samples"]["piqa_local"]
    assert len(samples) == 5
    for sample in samples:
        pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in sample["arguments"]]
        ours = loglikelihoods(model, pairs)
        assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx([s.loglikelihood for s in ours], abs=1e-5)
    metrics = out["results"]["piqa_local"]
    expected = evaluate_task(model, tokenizer, load_task(FIXTURES / "piqa-mini.jsonl")).metrics
    assert metrics["acc,none"] == expected["acc"] and metrics["acc_norm,none"] == expected["acc_norm"]


def request(*args):
    return SimpleNamespace(args=args)


ROLLING_YAML = """task: text_local
dataset_path: json
dataset_kwargs:
  cache_dir: {cache}
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def test_a_rolling_harness_task_equals_transformers_loss_on_the_export(model, tokenizer, hf_dir, tmp_path):
    """lm-eval's loglikelihood_rolling through SlmtrainLM against transformers' own loss on the HF export of the
    same model: the sum of log p(token | BOS and the tokens before it) over each document."""
    from transformers import AutoModelForCausalLM

    texts = ["def f(x):\n    return x", "The quick brown fox jumps over the lazy dog."]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "text_local.yaml").write_text(ROLLING_YAML.format(data=data, cache=tmp_path / "cache"))
    samples = run_harness(model, tokenizer, ["text_local"], include_path=tmp_path, log_samples=True)["samples"]
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for sample in sorted(samples["text_local"], key=lambda s: s["doc_id"]):
        ids = torch.tensor([[BOS, *tokenizer.encode(texts[sample["doc_id"]])]])
        with torch.no_grad():
            mean_nll = reference(ids, labels=ids).loss  # transformers shifts the labels itself
        assert float(sample["resps"][0][0]) == pytest.approx(-float(mean_nll) * (ids.shape[1] - 1), abs=1e-3)


def test_generation_requests(model, tokenizer):
    lm = SlmtrainLM(model, tokenizer)
    [generated] = lm.generate_until([request("Q: hi\nA:", {"until": ["\n\n"], "max_gen_toks": 8})])
    assert generated == greedy_until(model, tokenizer, "Q: hi\nA:", ["\n\n"], 8)[0]
    with pytest.raises(UserError, match="greedily"):
        lm.generate_until([request("Q", {"do_sample": True, "temperature": 0.7})])


def test_unknown_harness_task_is_a_clear_error(model, tokenizer, tmp_path):
    with pytest.raises(UserError, match="no_such_task"):
        run_harness(model, tokenizer, ["no_such_task"], include_path=tmp_path)
