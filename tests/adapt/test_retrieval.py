"""Retrieval: chunking, BM25 and MiniLM search over the personal notes, and launch/eval.py with retrieval=."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slmtrain.adapt.personal import FACTS
from slmtrain.adapt.retrieval import (CONTEXT_HEADER, INDEX_FILE, build_index, chunk, load_index, read_documents,
                                     save_index, with_retrieval)
from slmtrain.config import UserError
from tests.output import diagnostics
from tests.paths import REPO_ROOT
from slmtrain.eval.tasks import load_task


def test_chunks_keep_whole_lines():
    text = "one two three\nfour five\n\nsix seven eight nine\nten"
    assert chunk(text, 5) == ["one two three\nfour five", "six seven eight nine\nten"]
    assert chunk(text, 2) == ["one two three", "four five", "six seven eight nine", "ten"]


@pytest.mark.parametrize("method", ["bm25", "minilm"])
def test_held_out_questions_retrieve_their_fact(task, method):
    index = build_index(read_documents([task["notes.txt"]]), method, chunk_words=8)
    assert len(index.chunks) == len(FACTS)
    hits = sum(statement in index.search(held_out, 3) for statement, _, _, held_out, *_ in FACTS)
    assert hits >= (6 if method == "bm25" else 12)  # of 12 questions phrased unlike their notes (measured: 7, 12)


@pytest.mark.parametrize("method", ["bm25", "minilm"])
def test_a_saved_index_searches_as_the_built_one_and_damage_is_one_line(task, method, tmp_path):
    index = build_index(read_documents([task["notes.txt"]]), method, chunk_words=8)
    save_index(index, tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    assert loaded.method == method and loaded.chunks == index.chunks
    for _, _, _, held_out, *_ in FACTS:
        assert loaded.search(held_out, 3) == index.search(held_out, 3)
    with pytest.raises(UserError, match="already holds a retrieval index"):
        save_index(index, tmp_path / "index")
    (tmp_path / "index" / INDEX_FILE).write_text('{"method": "bm25", "chunks": ')  # cut short
    with pytest.raises(UserError, match=f"{INDEX_FILE}: not a readable retrieval index"):
        load_index(tmp_path / "index")


def test_task_prompts_get_the_retrieved_context(task):
    questions = load_task(task["questions.jsonl"])
    index = build_index(read_documents([task["notes.txt"]]), "bm25", chunk_words=8)
    augmented = with_retrieval(questions, index, k=2)
    first = augmented.items[0]
    original = questions.items[0].contexts[0]
    assert all(c.startswith(CONTEXT_HEADER) and c.endswith(original) for c in first.contexts)
    assert first.contexts[0].count("\n") == original.count("\n") + 4  # header, 2 chunks, blank
    assert first.continuations == questions.items[0].continuations and first.label == questions.items[0].label
    with pytest.raises(UserError, match="no text to index"):
        build_index(["\n \n"])
    (task["notes.txt"].parent / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(UserError, match="binary.txt: not UTF-8 text"):
        read_documents([task["notes.txt"].parent / "binary.txt"])


def test_eval_command_with_retrieval(base_dir, task, tmp_path):
    command = [sys.executable, str(REPO_ROOT / "launch" / "eval.py"), f"model={base_dir}",
               f"tasks={task['questions.jsonl']}", f"retrieval={task['notes.txt']}", "retrieval_k=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "questions+retrieval" in done.stdout
    built = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "index.py"), f"documents={task['notes.txt']}",
                            f"out={tmp_path / 'index'}"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0 and "bm25 index of" in built.stdout, built.stderr
    saved = subprocess.run([*command[:-2], f"retrieval={tmp_path / 'index'}", "retrieval_k=2"], capture_output=True,
                           text=True, timeout=120)
    assert saved.returncode == 0 and saved.stdout == done.stdout, saved.stderr  # the same prompts, the same scores
    done = subprocess.run([*command[:3], f"text={task['notes.txt']}", f"retrieval={task['notes.txt']}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "retrieval goes into slmtrain task prompts" in diagnostics(done.stderr)
