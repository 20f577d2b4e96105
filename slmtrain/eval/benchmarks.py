"""The standard benchmarks, read offline (:mod:`slmtrain.eval.benchmark_data`), with lm-evaluation-harness's prompts.

Each builder turns one document into an item exactly as the harness's task YAML does (``doc_to_text``,
``doc_to_choice``, ``doc_to_target``, ``target_delimiter``, ``description``, its ``process_docs``); the per-item
log-likelihoods equal the harness's own (tests/eval/test_benchmarks.py runs its YAMLs on the same documents).
Where the installed data is not the split or the copy lm-eval reads, ``notes`` says so and the table shows it:

- ARC, OpenBookQA and SciQ: lm-eval scores their test splits; the validation split is what is installed.
- BoolQ: google/boolq's copy (``answer`` true/false) of the same validation documents as super_glue's.
- TriviaQA: the ``rc.wikipedia.nocontext`` validation questions (7,993), lm-eval's ``rc.nocontext`` has 17,944.
- GSM8K: only the test questions are installed, inside the OLMES request file, whose 8-shot chain-of-thought
  context is used (lm-eval draws 5 shots from the training split, not installed); the last number generated is
  compared with the answer (lm-eval's ``flexible-extract``).
- Few-shot examples (``shots=K``) come from the same split, never the item itself, drawn with a seed (lm-eval draws
  them from the training split); MMLU's come from its dev split, first-n, as lm-eval's.

``NAME:rc`` and ``NAME:mc`` are the OLMES variants (curated 5-shot contexts; cloze or lettered choices), read from
the request files as they are.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from slmtrain.eval.benchmark_data import read_requests, read_split, subsets
from slmtrain.eval.tasks import JSONL_FORMATS, Generation, MultipleChoice, Task, register

MC = ("acc", "acc_norm", "bpb")  # lm-eval's YAML has acc and acc_norm; bpb of the gold answer is ours
MC_ACC = ("acc", "bpb")  # lm-eval's YAML has acc only
NOT_TEST = "validation split (lm-eval scores the test split, not installed)"


def _mc_task(name: str, path: str, build: Callable[[dict[str, Any]], MultipleChoice], metrics: tuple[str, ...],
             notes: str = "") -> Task:
    return Task(name, [build(doc) for doc in read_split(path)], metrics, "commonsense", notes=notes)


# ------------------------------------------------------------------------------------------------ commonsense
def _hellaswag_clean(text: str) -> str:
    """lm-eval's ``hellaswag/utils.preprocess``: WikiHow artefacts out, double spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(doc: dict[str, Any]) -> MultipleChoice:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return MultipleChoice.shared(_hellaswag_clean(doc["activity_label"] + ": " + context),
                                 [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def piqa_item(doc: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice.shared(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def winogrande_item(doc: dict[str, Any]) -> MultipleChoice:
    """Partial scoring: each option fills the blank in its own context; the rest of the sentence is scored."""
    blank = doc["sentence"].index("_")
    contexts = tuple(doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"]))
    target = " " + doc["sentence"][blank + 1:].strip()
    return MultipleChoice(contexts, (target, target), {"1": 0, "2": 1}[str(doc["answer"])],
                          tuple(len(c) for c in contexts))


def arc_item(doc: dict[str, Any]) -> MultipleChoice:
    labels = list(doc["choices"]["label"])
    if doc["answerKey"] not in labels:
        raise ValueError(f"answerKey {doc['answerKey']!r} is not one of the labels {labels}")
    return MultipleChoice.shared(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
                                 labels.index(doc["answerKey"]))


def openbookqa_item(doc: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice.shared(doc["question_stem"], list(doc["choices"]["text"]),
                                 list(doc["choices"]["label"]).index(doc["answerKey"].lstrip()))


def sciq_item(doc: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice.shared(f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:",
                                 [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]], 3)


def boolq_item(doc: dict[str, Any]) -> MultipleChoice:
    answer = doc["answer"] if "answer" in doc else doc["label"]
    label = int(answer) if not isinstance(answer, str) else {"false": 0, "true": 1, "0": 0, "1": 1}[answer.lower()]
    return MultipleChoice.shared(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], label)


def social_iqa_item(doc: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice.shared(f"Q: {doc['context']} {doc['question']}\nA:",
                                 [doc["answerA"], doc["answerB"], doc["answerC"]], int(doc["label"]) - 1)


def commonsense_qa_item(doc: dict[str, Any]) -> MultipleChoice:
    texts = doc["choices"]["text"]
    listing = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCDE", texts))
    return MultipleChoice.shared(f"Question: {doc['question'].strip()}{listing}\nAnswer:", list("ABCDE"[:len(texts)]),
                                 "ABCDE".index(doc["answerKey"]))


def copa_item(doc: dict[str, Any]) -> MultipleChoice:
    """lm-eval's super_glue/copa utils: the premise without its period, joined by "because" / "therefore"; each
    choice lower-cased at its start and led by a space, after the target delimiter's own (so two spaces)."""
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    choices = [" " + c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]
    return MultipleChoice.shared(doc["premise"].strip()[:-1] + f" {connector}", choices, int(doc["label"]))


COMMONSENSE: dict[str, tuple[str, Callable[[dict[str, Any]], MultipleChoice], tuple[str, ...], str]] = {
    "hellaswag": ("hellaswag/none/validation", hellaswag_item, MC, ""),
    "piqa": ("piqa/plain_text/validation", piqa_item, MC, ""),
    "winogrande": ("winogrande/winogrande_xl/validation", winogrande_item, MC_ACC, ""),
    "arc_easy": ("ai2_arc/ARC-Easy/validation", arc_item, MC, NOT_TEST),
    "arc_challenge": ("ai2_arc/ARC-Challenge/validation", arc_item, MC, NOT_TEST),
    "openbookqa": ("openbookqa/main/validation", openbookqa_item, MC, NOT_TEST),
    "sciq": ("sciq/none/validation", sciq_item, MC, NOT_TEST),
    "boolq": ("boolq/none/validation", boolq_item, MC_ACC, "google/boolq's copy of the validation documents"),
    "social_iqa": ("social_i_qa/none/validation", social_iqa_item, MC_ACC, ""),
    "commonsense_qa": ("tau/commonsense_qa/none/validation", commonsense_qa_item, MC_ACC, ""),
    "copa": ("super_glue/copa/validation", copa_item, MC_ACC, ""),
}

for _name, (_path, _build, _metrics, _notes) in COMMONSENSE.items():
    register(_name, "commonsense", f"lm-eval's {_name}, {_path.split('/')[-1]} split")(
        lambda n=_name, p=_path, b=_build, m=_metrics, o=_notes: _mc_task(n, p, b, m, o))


# ---------------------------------------------------------------------------------------------------- knowledge
def mmlu_item(doc: dict[str, Any]) -> MultipleChoice:
    listing = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", doc["choices"]))
    return MultipleChoice.shared(f"{doc['question'].strip()}{listing}\nAnswer:", list("ABCD"), int(doc["answer"]))


@register("mmlu", "knowledge", "lm-eval's mmlu: 57 subjects, test split, dev examples; macro over subjects")
def mmlu() -> Task:
    items, groups, descriptions, fewshot = [], [], {}, {}
    for subject in subsets("hails/mmlu_no_train"):
        docs = read_split(f"hails/mmlu_no_train/{subject}/test")
        items += [mmlu_item(doc) for doc in docs]
        groups += [subject] * len(docs)
        descriptions[subject] = (f"The following are multiple choice questions (with answers) about "
                                 f"{subject.replace('_', ' ')}.\n\n")
        fewshot[subject] = [mmlu_item(doc) for doc in read_split(f"hails/mmlu_no_train/{subject}/dev")]
    return Task("mmlu", items, MC_ACC, "knowledge", description=descriptions, fewshot_items=fewshot, groups=groups,
                notes="acc is the macro average over subjects; acc_micro weights by size (lm-eval's group score)")


def exact_match(output: str, references: list[str], ignore: str = "") -> dict[str, float]:
    """lm-eval's exact_match with ignore_case and ignore_punctuation (after removing ``ignore``), over any of the
    references, after its ``remove_whitespace`` filter (leading spaces)."""
    def normal(text: str) -> str:
        text = re.sub(ignore, "", text) if ignore else text
        return text.lower().translate(str.maketrans("", "", string.punctuation))
    output = normal(output.lstrip())
    return {"exact_match": float(any(output == normal(r) for r in references))}


def _articles_ignored(output: str, references: list[str]) -> dict[str, float]:
    return exact_match(output, references, ignore=r"\b(?:The |the |An |A |The |a |an )")


@register("triviaqa", "knowledge", "lm-eval's triviaqa (rc.wikipedia.nocontext validation), generation")
def triviaqa() -> Task:
    items = [Generation(f"Question: {doc['question']}?\nAnswer:", " " + doc["answer"]["aliases"][0],
                        list(doc["answer"]["aliases"])) for doc in read_split("trivia_qa/rc.wikipedia.nocontext/validation")]
    return Task("triviaqa", items, ("exact_match",), "knowledge", scorer=exact_match, until=("\n", ".", ","),
                notes="rc.wikipedia.nocontext questions (lm-eval: rc.nocontext)")


@register("nq_open", "knowledge", "lm-eval's nq_open (validation), generation")
def nq_open() -> Task:
    items = [Generation(f"Q: {doc['question']}?\nA:", " " + list(doc["answer"])[0], list(doc["answer"]))
             for doc in read_split("nq_open/none/validation")]
    return Task("nq_open", items, ("exact_match",), "knowledge", scorer=_articles_ignored, until=("\n", ".", ","),
                description="Answer these questions:\n\n", fewshot_delimiter="\n")


# --------------------------------------------------------------------------------------------------------- math
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_number(text: str) -> str | None:
    """The number after ``####`` if there is one, else the last number in the text, canonical: commas, a dollar
    sign and trailing fractional zeros removed (``1,000``, ``1000.0``, ``$1000`` all read ``1000``)."""
    marked = text.split("####")[-1] if "####" in text else text
    numbers = NUMBER.findall(marked.replace("$", ""))
    if not numbers:
        return None
    number = (numbers[0] if "####" in text else numbers[-1]).replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def number_match(output: str, answer: str) -> dict[str, float]:
    return {"exact_match": float(extract_number(output) == extract_number(answer))}


@register("gsm8k", "math", "GSM8K test questions with the OLMES 8-shot chain-of-thought context, generation")
def gsm8k() -> Task:
    items = [Generation(r["request"]["context"], r["request"]["continuation"], str(r["doc"]["short_answer"]))
             for r in read_requests("gsm8k", "gold_bpb_5shot")]
    return Task("gsm8k", items, ("exact_match",), "math", scorer=number_match,
                until=("Question:", "</s>", "<|im_end|>", "\n\n"), has_fewshot=True,
                notes="8-shot CoT context of the OLMES file; the last number generated is compared (flexible-extract)")


# --------------------------------------------------------------------------------------------- OLMES variants
OLMES_FILES = {"hellaswag": "hellaswag", "piqa": "piqa", "winogrande": "winogrande", "arc_easy": "arc_easy",
               "arc_challenge": "arc_challenge", "openbookqa": "openbookqa", "sciq": "sciq", "boolq": "boolq",
               "social_iqa": "socialiqa", "commonsense_qa": "csqa"}


UNCONDITIONED_DOC_IDS = 1_000_000  # OLMES's uncond_docid_offset: requests for PMI's unconditioned "Answer:" scores


def olmes_task(name: str, style: str) -> Task:
    """The OLMES requests of ``NAME:rc`` (cloze: the answer texts) or ``NAME:mc`` (lettered choices), 5-shot as
    curated; one item per document, its choices in request order."""
    by_doc: dict[Any, list[dict[str, Any]]] = {}
    for request in read_requests(OLMES_FILES[name], f"{style}_5shot"):
        if request["doc_id"] < UNCONDITIONED_DOC_IDS:
            by_doc.setdefault(request["doc_id"], []).append(request)
    items = []
    for requests in by_doc.values():
        requests.sort(key=lambda r: r["idx"])
        contexts = tuple(r["request"]["context"] for r in requests)
        continuations = tuple(r["request"]["continuation"] for r in requests)
        items.append(MultipleChoice(contexts, continuations, int(requests[0]["label"]),
                                    tuple(len(c) for c in continuations)))
    return Task(f"{name}:{style}", items, MC, "icl", has_fewshot=True,
                notes=f"OLMES {style.upper()} 5-shot, as the request file has it")


for _name in OLMES_FILES:
    for _style in ("rc", "mc"):
        register(f"{_name}:{_style}", "icl", f"OLMES {_style.upper()} 5-shot {_name}")(
            lambda n=_name, s=_style: olmes_task(n, s))


# ---------------------------------------------------------------------------- the same formats in users' files
def _gsm8k_record(doc: dict[str, Any]) -> Generation:
    answer = extract_number(doc["answer"])
    if answer is None:
        raise ValueError("the answer has no final number")
    return Generation(f"Question: {doc['question']}\nAnswer:", " " + doc["answer"].strip(), answer)


JSONL_FORMATS.update({  # records as the Hugging Face datasets have them, one per line
    "hellaswag": (("activity_label", "ctx_a", "ctx_b", "endings", "label"), hellaswag_item, {"metrics": MC}),
    "arc": (("question", "choices", "answerKey"), arc_item, {"metrics": MC}),
    "piqa": (("goal", "sol1", "sol2", "label"), piqa_item, {"metrics": MC}),
    "gsm8k": (("question", "answer"), _gsm8k_record,
              {"family": "math", "scorer": number_match, "until": ("Question:", "</s>", "<|im_end|>", "\n\n")}),
})
