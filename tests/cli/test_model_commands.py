"""launch/model_info.py and launch/export_hf.py, run as a user runs them: a subprocess from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from slmtrain.model import presets

from tests.output import diagnostics
from tests.paths import REPO_ROOT

REPO = REPO_ROOT


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_model_info_json_is_the_accounting() -> None:
    result = run("model_info.py", "model=smollm2-135m", "model.n_layer=10", "seq_len=1024", "format=json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = presets.get("smollm2-135m", n_layer=10)
    assert report["model"] == "smollm2-135m"
    assert report["params"] == expected.params()
    assert report["non_embedding_params"] == expected.non_embedding_params()
    assert report["train_flops_per_token"] == expected.train_flops_per_token(1024)
    assert report["kv_cache_bytes_per_token"] == expected.kv_cache_bytes_per_token()
    assert report["config"]["n_layer"] == 10
    announced = json.loads(result.stderr.splitlines()[0].removeprefix("config: "))  # the resolved options, first
    assert announced["model"]["preset"] == "smollm2-135m" and announced["seq_len"] == 1024


def test_model_info_table() -> None:
    result = run("model_info.py", "model=smollm2-135m")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("smollm2-135m: 30 layers, d_model 576, 9 heads (3 KV")
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows["params"] == "134,515,008"
    assert rows["train_flops_per_token"] == f"{presets.get('smollm2-135m').train_flops_per_token():,}"
    assert len({line.index(rows[key]) + len(rows[key]) for key, line in zip(rows, lines[1:])}) == 1  # right-aligned


def test_model_info_without_a_preset() -> None:
    result = run("model_info.py", "model.d_model=128", "model.n_head=4", "model.n_layer=2", "model.vocab_size=1000",
                 "format=json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == presets.resolve(
        dict(d_model=128, n_head=4, n_layer=2, vocab_size=1000)).params()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # model=NAME is model.preset=NAME
        (["model=smollm3"], "error: model.preset: unknown preset 'smollm3'; valid choices: demo-2m,"),
        (["model=tiny", "model.layers=3"], "error: model.layers: unknown key; valid keys: attention_backend,"),
        (["model=tiny", "model.n_kv_head=3"], "error: model.n_kv_head: n_head=4 is not divisible by n_kv_head=3"),
        (["model=tiny", "format=xml"], "error: format: invalid value 'xml'; valid choices: table, json"),
        (["model=tiny", "seq_len=0"], "error: seq_len: must be positive"),
        (["seq_len=8"], "error: model: required: model=NAME"),
    ],
)
def test_model_info_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = run("model_info.py", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert diagnostics(result.stderr).startswith(message)
    assert len(diagnostics(result.stderr).strip().splitlines()) == 1


def save_word_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(93)]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")
    fast.save_pretrained(path)


def test_export_hf_script_from_an_hf_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    original = transformers.LlamaForCausalLM(config).eval()
    original.save_pretrained(source)
    save_word_tokenizer(source)
    result = run("export_hf.py", f"model={source}", f"out={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert "exported hf" in result.stdout
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert (exported(ids).logits - original(ids).logits).abs().max().item() < 1e-4
    assert (exported.config.bos_token_id, exported.config.eos_token_id) == (1, 2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.encode("w0 w5", add_special_tokens=False) == [3, 8]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out=x"], "error: model: required: model=PATH out=DIR"),
        (["model=does/not/exist", "out=x"], "error: model not found: does/not/exist"),
        (["model=tiny", "out=x", "dtype=int3"], "error: dtype: invalid value 'int3'; valid choices: fp32, bf16, fp16"),
        # the model key is model= as in every other command; ckpt= (resume) belongs to train.py
        (["ckpt=tiny", "out=x"], "error: ckpt: unknown key; valid keys: dtype, model, out"),
    ],
)
def test_export_hf_script_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = run("export_hf.py", *args)
    assert result.returncode == 2
    assert diagnostics(result.stderr).startswith(message)
    assert len(diagnostics(result.stderr).strip().splitlines()) == 1
