"""JSONL records -> token ids and loss masks; unusable lines counted by reason, never dropped silently."""

from __future__ import annotations

import json

import pytest

from slmtrain.adapt.data import IGNORE_INDEX, collate, read_examples, split_examples
from slmtrain.artifacts import HFTokenizer
from slmtrain.config import UserError
from tests.eval.eval_helpers import BOS, EOS, ByteTokenizer


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def trained_text(example) -> str:
    return bytes(label for label in example.labels if 0 <= label < 256).decode()


def test_each_format_trains_on_its_target_only(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        {"text": "all of it"},
        {"prompt": "Q: name?\nA:", "completion": " Mira"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "dog?"}, {"role": "assistant", "content": "Biscuit"}]},
    ])
    (text, completion, chat), report = read_examples(path, ByteTokenizer(), seq_len=256)
    assert report.used == 3 and not report.skipped
    assert text.input_ids[0] == BOS and text.input_ids[-1] == EOS and trained_text(text) == "all of it"
    assert trained_text(completion) == " Mira" and completion.labels[-1] == EOS
    assert bytes(chat.input_ids[1:-1]).decode() == "user: hi\nassistant: hello\nuser: dog?\nassistant: Biscuit\n"
    assert trained_text(chat) == "hello\nBiscuit\n"  # the default template: assistant content only


def test_the_tokenizers_chat_template_renders_messages(tmp_path, ):
    from tests.eval.eval_helpers import save_byte_level_hf_tokenizer

    save_byte_level_hf_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}" \
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    path = write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "yo"}]}])
    (chat,), _ = read_examples(path, HFTokenizer(tmp_path, BOS), seq_len=64)
    assert bytes(i for i in chat.input_ids if i < 256).decode() == "<|user|>hi\n<|assistant|>yo\n"
    assert trained_text(chat) == "yo\n"


def test_unusable_lines_are_counted_by_reason(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        {"text": "fine"}, "{broken", {"title": "no known field"}, {"prompt": "p", "completion": ""},
        {"messages": [{"role": "user", "content": "only a question"}]}, {"prompt": "x" * 50, "completion": "late"},
        {"text": "long " * 40}, "", "[1, 2]",
    ])
    examples, report = read_examples(path, ByteTokenizer(), seq_len=32)
    assert report.lines == 8 and report.used == 2 and report.truncated == 1  # the skipped long prompt is not counted
    assert dict(report.skipped) == {"invalid JSON": 1, "no field of a known format": 1, "empty completion": 1,
                                    "no assistant turn": 1, "no target token within seq_len=32": 1,
                                    "not a JSON object": 1}
    assert report.first_skipped_line["invalid JSON"] == 2 and report.first_skipped_line["not a JSON object"] == 9
    assert all(len(e.input_ids) <= 33 for e in examples)


def test_empty_and_unusable_files_are_errors(tmp_path):
    with pytest.raises(UserError, match="empty data file"):
        read_examples(write(tmp_path / "e.jsonl", ["", "  "]), ByteTokenizer(), 32)
    with pytest.raises(UserError, match="no usable record"):
        read_examples(write(tmp_path / "u.jsonl", ["nope"]), ByteTokenizer(), 32)
    with pytest.raises(UserError, match="data file not found"):
        read_examples(tmp_path / "missing.jsonl", ByteTokenizer(), 32)


def test_split_and_batches(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": " a" * (i + 1)} for i in range(10)])
    examples, _ = read_examples(path, ByteTokenizer(), 64)
    train, val = split_examples(examples, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and not {id(e) for e in train} & {id(e) for e in val}
    assert split_examples(examples, 0.2, seed=0)[1] == val
    batch = collate(examples[:3], pad_id=BOS)
    assert batch.inputs.shape == batch.targets.shape == (3, max(len(e.input_ids) for e in examples[:3]) - 1)
    assert batch.target_tokens == sum(e.target_tokens for e in examples[:3])
    assert (batch.targets[0, len(examples[0].input_ids) - 1:] == IGNORE_INDEX).all()  # padding is no target
