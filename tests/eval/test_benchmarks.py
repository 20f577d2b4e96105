"""The benchmarks against lm-evaluation-harness itself: its own task YAMLs (included whole, only the dataset pointed
at local JSON files of the same documents), its ``hf`` model on the tiny model's transformers export, fp32.
Every choice's log-likelihood must equal slmtrain's for the same documents within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmtrain.eval import benchmarks
from slmtrain.eval.benchmark_data import read_split
from slmtrain.eval.scoring import evaluate_task
from slmtrain.eval.tasks import Task, load_task

DOCS = 3
CONTEXT = 1024  # BoolQ's longest passages (1,437 bytes) are cut from the left: the truncation rule is compared too
# task: (lm-eval's YAML under lm_eval/tasks, our builder, installed split, split lm-eval reads it as)
CASES = {
    "hellaswag": ("hellaswag/hellaswag.yaml", benchmarks.hellaswag_item, "hellaswag/none/validation", "validation"),
    "piqa": ("piqa/piqa.yaml", benchmarks.piqa_item, "piqa/plain_text/validation", "validation"),
    "winogrande": ("winogrande/default.yaml", benchmarks.winogrande_item, "winogrande/winogrande_xl/validation",
                   "validation"),
    "arc_easy": ("arc/arc_easy.yaml", benchmarks.arc_item, "ai2_arc/ARC-Easy/validation", "validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", benchmarks.arc_item, "ai2_arc/ARC-Challenge/validation", "validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", benchmarks.openbookqa_item, "openbookqa/main/validation",
                   "validation"),
    "sciq": ("sciq/sciq.yaml", benchmarks.sciq_item, "sciq/none/validation", "validation"),
    "boolq": ("super_glue/boolq/default.yaml", benchmarks.boolq_item, "boolq/none/validation", "validation"),
    "social_iqa": ("siqa/siqa.yaml", benchmarks.social_iqa_item, "social_i_qa/none/validation", "validation"),
    "commonsense_qa": ("commonsense_qa/default.yaml", benchmarks.commonsense_qa_item,
                       "tau/commonsense_qa/none/validation", "validation"),
    "copa": ("super_glue/copa/default.yaml", benchmarks.copa_item, "super_glue/copa/validation", "validation"),
    "mmlu": ("mmlu/default/mmlu_anatomy.yaml", benchmarks.mmlu_item, "hails/mmlu_no_train/anatomy/test", "test"),
}


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def as_super_glue(doc: dict) -> dict:
    """google/boolq's ``answer`` as super_glue's ``label``: the column lm-eval's YAML reads (same documents)."""
    return {**doc, "label": int(doc["answer"])} if "answer" in doc and "passage" in doc else doc


@pytest.fixture(scope="module")
def harness_samples(tmp_path_factory, request) -> dict[str, list[dict]]:
    """Every case run through lm-eval once (module scope: one harness start for all twelve)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slmtrain.model.formats.hf import export_hf
    from tests.eval.eval_helpers import BOS, EOS, save_byte_level_hf_tokenizer, tiny_model

    root = tmp_path_factory.mktemp("harness")
    hf_dir = export_hf(tiny_model(max_seq_len=CONTEXT), root / "hf", bos_id=BOS, eos_id=EOS)
    save_byte_level_hf_tokenizer(hf_dir)
    for name, (yaml, _, split, as_split) in CASES.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(as_super_glue(d)) + "\n" for d in read_split(split)[:DOCS]))
        files = {as_split: str(data)}
        if name == "mmlu":  # its few-shot split must exist, though zero shots are drawn from it
            dev = root / "mmlu_dev.jsonl"
            dev.write_text("".join(json.dumps(d) + "\n" for d in read_split(split.replace("/test", "/dev"))))
            files["dev"] = str(dev)
        override = {"include": str(lm_eval_tasks_dir() / yaml), "task": f"{name}_local", "dataset_path": "json",
                    "dataset_name": None, "dataset_kwargs": {"data_files": files, "cache_dir": str(root / "cache")},
                    "training_split": None, "validation_split": "validation" if as_split == "validation" else None,
                    "test_split": "test" if as_split == "test" else None, "tag": []}
        (root / f"{name}_local.yaml").write_text(json.dumps(override))  # JSON is YAML
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32,add_bos_token=True", tasks=[f"{n}_local" for n in CASES],
        num_fewshot=0, task_manager=TaskManager(include_path=str(root), include_defaults=False), bootstrap_iters=0,
        log_samples=True, batch_size=4, device="cpu")
    return {name: sorted(out["samples"][f"{name}_local"], key=lambda s: s["doc_id"]) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_per_item_loglikelihoods_equal_lm_eval(name, harness_samples, tokenizer):
    from tests.eval.eval_helpers import tiny_model

    _, build, split, _ = CASES[name]
    items = [build(doc) for doc in read_split(split)[:DOCS]]
    if name == "mmlu":  # the registry's task, whose subject descriptions lead each prompt
        mmlu = load_task("mmlu")
        first = mmlu.groups.index("anatomy")
        task = Task(name, mmlu.items[first: first + DOCS], description=mmlu.description["anatomy"])
        items = [item.prefixed(task.description) for item in task.items]
    else:
        task = Task(name, items)
    ours = evaluate_task(tiny_model(max_seq_len=CONTEXT), tokenizer, task).records
    theirs = harness_samples[name]
    assert len(theirs) == DOCS
    for item, record, sample in zip(items, ours, theirs):
        assert [tuple(a) for a in sample["arguments"]] == list(zip(item.contexts, item.continuations))
        assert record["loglikelihoods"] == pytest.approx([float(r[0][0]) for r in sample["resps"]], abs=1e-4)
        assert record["acc"] == sample["acc"]


def test_registry_reads_whole_validation_splits():
    sizes = {name: len(load_task(name).items) for name in ("hellaswag", "piqa", "winogrande", "arc_easy",
                                                           "arc_challenge", "copa")}
    assert sizes == {"hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "arc_easy": 570, "arc_challenge": 299,
                     "copa": 100}
    mmlu = load_task("mmlu")
    assert len(mmlu.items) == 14042 and len(set(mmlu.groups)) == 57
    hellaswag = load_task("hellaswag").items[0]  # the activity label and ctx_b capitalised, as lm-eval builds it
    assert hellaswag.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"
