"""The benchmarks against lm-evaluation-harness itself: its own task YAMLs (included whole, only the dataset pointed
at local JSON files of the same documents), its ``hf`` model on the tiny model's transformers export, fp32.
Every choice's log-likelihood must equal slmtrain's for the same documents within 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmtrain.eval import benchmarks
from slmtrain.eval.benchmark_data import read_split
from slmtrain.eval.harness import installed_split, write_local_harness_task
from slmtrain.eval.scoring import evaluate_task
from slmtrain.eval.tasks import Task, load_task

DOCS = 3
CONTEXT = 1024  # BoolQ's longest passages (1,437 bytes) are cut from the left: the truncation rule is compared too
BUILDERS = {"hellaswag": benchmarks.hellaswag_item, "piqa": benchmarks.piqa_item,
            "winogrande": benchmarks.winogrande_item, "arc_easy": benchmarks.arc_item,
            "arc_challenge": benchmarks.arc_item, "openbookqa": benchmarks.openbookqa_item,
            "sciq": benchmarks.sciq_item, "boolq": benchmarks.boolq_item, "social_iqa": benchmarks.social_iqa_item,
            "commonsense_qa": benchmarks.commonsense_qa_item, "copa": benchmarks.copa_item,
            "mmlu_anatomy": benchmarks.mmlu_item}


@pytest.fixture(scope="module")
def harness_samples(tmp_path_factory) -> dict[str, list[dict]]:
    """Every benchmark through lm-eval once (module scope: one harness start for all twelve)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slmtrain.model.formats.hf import export_hf
    from tests.eval.eval_helpers import BOS, EOS, save_byte_level_hf_tokenizer, tiny_model

    root = tmp_path_factory.mktemp("harness")
    hf_dir = export_hf(tiny_model(max_seq_len=CONTEXT), root / "hf", bos_id=BOS, eos_id=EOS)
    save_byte_level_hf_tokenizer(hf_dir)
    tasks = {name: write_local_harness_task(name, root / "tasks", DOCS) for name in BUILDERS}
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32,add_bos_token=True", tasks=list(tasks.values()),
        num_fewshot=0, task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False),
        bootstrap_iters=0, log_samples=True, batch_size=4, device="cpu")
    return {name: sorted(out["samples"][task], key=lambda s: s["doc_id"]) for name, task in tasks.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_per_item_loglikelihoods_equal_lm_eval(name, harness_samples, tokenizer):
    from tests.eval.eval_helpers import tiny_model

    items = [BUILDERS[name](doc) for doc in read_split(installed_split(name)[0])[:DOCS]]
    if name == "mmlu_anatomy":  # the registry's task, whose subject descriptions lead each prompt
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
    assert any(r["truncated"] for r in ours) == (name == "boolq")  # only BoolQ's passages outgrow the context


def test_registry_reads_whole_validation_splits():
    sizes = {name: len(load_task(name).items) for name in ("hellaswag", "piqa", "winogrande", "arc_easy",
                                                           "arc_challenge", "copa")}
    assert sizes == {"hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "arc_easy": 570, "arc_challenge": 299,
                     "copa": 100}
    mmlu = load_task("mmlu")
    assert len(mmlu.items) == 14042 and len(set(mmlu.groups)) == 57
    hellaswag = load_task("hellaswag").items[0]  # the activity label and ctx_b capitalised, as lm-eval builds it
    assert hellaswag.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"


def test_the_package_ships_no_toy_benchmark_files():
    from slmtrain.eval.tasks import task_names

    data = Path(benchmarks.__file__).parent / "data"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jsonl") if p.parent == data) == []
    assert not [name for name in task_names() if name in ("arc-mini", "piqa-mini", "hellaswag-mini", "gsm8k-mini")]
