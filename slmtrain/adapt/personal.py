"""The demo personal-data task: facts about a fictional user that no model has seen, in the files a personal
assistant would have.

``write_personal_task(out_dir)`` writes

- ``notes.txt``: the user's notes, one fact per line (what retrieval indexes);
- ``train.jsonl``: the facts as ``text`` records and as ``prompt`` + ``completion`` questions in two phrasings;
- ``val.jsonl``: the same facts asked in a third phrasing, never trained on (the held-out loss);
- ``questions.jsonl``: that third phrasing as multiple choice in ARC's format (``launch/eval.py tasks=FILE``), the
  right answer among three values of the same kind taken from the other facts' distractors.
"""

from __future__ import annotations

import json
from pathlib import Path

USER = "Mira Okafor"
# (statement, question 1, question 2, held-out question, answer, three wrong answers of the same kind)
FACTS: list[tuple[str, str, str, str, str, tuple[str, str, str]]] = [
    ("Mira's dog is called Biscuit.", "What is Mira's dog called?", "What name did Mira give her dog?",
     "Mira has a dog. What is its name?", "Biscuit", ("Pepper", "Nova", "Ziggy")),
    ("Mira lives in Tromsø.", "Where does Mira live?", "Which city is Mira's home?",
     "In which town is Mira's flat?", "Tromsø", ("Porto", "Halifax", "Nagoya")),
    ("Mira works as a glassblower.", "What is Mira's job?", "What does Mira do for a living?",
     "What is Mira's profession?", "glassblower", ("dentist", "pilot", "librarian")),
    ("Mira plays the bassoon.", "Which instrument does Mira play?", "What instrument is Mira learning?",
     "What does Mira practise on in the evenings?", "bassoon", ("violin", "drums", "harp")),
    ("Mira's sister is named Adaeze.", "What is the name of Mira's sister?", "Who is Mira's sister?",
     "Mira has one sister. What is she called?", "Adaeze", ("Greta", "Yuki", "Sofia")),
    ("Mira was born in October.", "In which month was Mira born?", "When is Mira's birthday month?",
     "Which month does Mira celebrate her birthday in?", "October", ("March", "June", "December")),
    ("Mira is allergic to hazelnuts.", "What is Mira allergic to?", "Which food gives Mira an allergy?",
     "What must Mira never eat?", "hazelnuts", ("shellfish", "strawberries", "sesame")),
    ("Mira drives a yellow van.", "What colour is Mira's van?", "Which colour is the van Mira drives?",
     "Mira's van is painted which colour?", "yellow", ("green", "silver", "purple")),
    ("Mira's favourite food is jollof rice.", "What is Mira's favourite food?", "Which dish does Mira love most?",
     "What would Mira order as her best-loved meal?", "jollof rice", ("ramen", "lasagne", "paella")),
    ("Mira collects antique maps.", "What does Mira collect?", "What is Mira's collection made of?",
     "What are the old things Mira keeps collecting?", "antique maps", ("stamps", "coins", "vinyl records")),
    ("Mira's gym session is on Thursdays.", "On which day does Mira go to the gym?", "When is Mira's gym day?",
     "Which weekday is Mira's workout?", "Thursday", ("Monday", "Saturday", "Tuesday")),
    ("Mira's best friend is Tobias.", "Who is Mira's best friend?", "What is the name of Mira's closest friend?",
     "Whom does Mira call her best friend?", "Tobias", ("Lena", "Marco", "Priya")),
]
QUESTION = "Question: {}\nAnswer:"


def write_personal_task(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("notes.txt", "train.jsonl", "val.jsonl", "questions.jsonl")}
    paths["notes.txt"].write_text("".join(f"{statement}\n" for statement, *_ in FACTS), encoding="utf-8")
    train, val, questions = [], [], []
    for statement, first, second, held_out, answer, wrong in FACTS:
        train.append({"text": f"{USER}'s notes: {statement}"})
        train += [{"prompt": QUESTION.format(q), "completion": f" {answer}"} for q in (first, second)]
        val.append({"prompt": QUESTION.format(held_out), "completion": f" {answer}"})
        position = len(questions) % 4  # the right answer's place rotates through A-D
        choices = [*wrong[:position], answer, *wrong[position:]]
        questions.append({"question": held_out, "choices": {"text": choices, "label": list("ABCD")},
                          "answerKey": "ABCD"[position]})
    for name, records in (("train.jsonl", train), ("val.jsonl", val), ("questions.jsonl", questions)):
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return paths
