"""Every method on the demo personal task; the PEFT adapter and the merged model in transformers; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from slmtrain.adapt.methods import save_hf_adapter, stored_bytes
from slmtrain.adapt.run import finetune, prepare
from slmtrain.artifacts import load_model
from slmtrain.config import ConfigError, UserError
from tests.paths import REPO_ROOT
from slmtrain.model.formats.hf import export_hf
from tests.eval.eval_helpers import BOS, EOS
from tests.adapt.conftest import options
from tests.output import diagnostics

LEARNING_RATES = {"full": 1e-3, "lora": 1e-2, "dora": 1e-2, "qlora": 1e-2, "mezo": 1e-3, "mezo_lora": 1e-2}


@pytest.mark.parametrize("method", list(LEARNING_RATES))
def test_every_method_lowers_the_held_out_loss(base_dir, task, tmp_path, method):
    overrides = {"method": method, "lr": LEARNING_RATES[method]}
    if method.startswith("mezo"):
        overrides |= {"trainer": {"max_steps": 150, "val_every_n_steps": 50}, "mezo": {"epsilon": 1e-2, "samples": 2}}
    result = finetune(options(base_dir, task, tmp_path, **overrides))
    assert result["val_loss_after"] < result["val_loss_before"] - 0.02
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,val_loss,tokens_per_s,peak_memory_bytes"
    assert len(rows) == 1 + result["steps"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["data"]["train"]["used"] == 36 and saved["data"]["val"]["used"] == 12
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() == (method in ("lora", "dora", "qlora", "mezo_lora"))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_peft_adapter_over_the_transformers_base_equals_slmtrain_and_the_merged_model(base_dir, task, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    @torch.no_grad()
    def transformers_logits(path, adapter=None):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()(ids).logits

    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    opts = options(base_dir, task, tmp_path, method=method, lr=1e-2, trainer={"max_steps": 8, "val_every_n_steps": 8})
    adapted = prepare(load_model(base_dir).model, method, opts.lora).eval()
    with torch.no_grad():  # adapters far from their zero start, DoRA magnitudes away from the weight norms
        for name, p in adapted.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.2 * torch.randn_like(p)) if "magnitude" in name else p.normal_(0, 0.1)
        ours = adapted(ids)
    save_hf_adapter(adapted, adapted.base_model.model.config, opts.lora, method == "dora", tmp_path / "mine", str(base_dir))
    export_hf(adapted.merge_and_unload(), tmp_path / "merged", bos_id=BOS, eos_id=EOS)
    assert (transformers_logits(base_dir, tmp_path / "mine") - ours).abs().max() < 1e-4
    assert (transformers_logits(tmp_path / "merged") - ours).abs().max() < 1e-4
    assert (transformers_logits(base_dir) - ours).abs().max() > 1e-2  # the adapter changes the function

    finetune(opts)  # a trained run's two outputs agree too
    trained = transformers_logits(base_dir, tmp_path / "adapter")
    assert (transformers_logits(tmp_path / "hf") - trained).abs().max() < 1e-4
    assert (transformers_logits(base_dir) - trained).abs().max() > 1e-3


def test_qlora_base_is_four_bit(base_dir):
    loaded = load_model(base_dir)
    from slmtrain.adapt.methods import LoraOptions

    model = prepare(loaded.model, "qlora", LoraOptions(rank=4))
    bases = [m.base_layer.weight for n, m in model.named_modules() if n.endswith((".qkv", ".out", ".up", ".down"))]
    assert len(bases) == 8
    weights = sum(w.numel() for w in bases)
    assert 0.5 * weights <= sum(stored_bytes(w) for w in bases) <= 0.53 * weights  # 4 bits + block scales
    assert all(not w.requires_grad for w in bases)


def test_bad_input_is_one_clear_error(base_dir, task, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty data file"):
        finetune(options(base_dir, task, tmp_path / "a", data=str(empty)))
    unusable = tmp_path / "unusable.jsonl"
    unusable.write_text('{"title": "x"}\nnot json\n')
    with pytest.raises(UserError, match="no usable record.*1 no field of a known format .first at line 1.; 1 invalid JSON .first at line 2."):
        finetune(options(base_dir, task, tmp_path / "b", data=str(unusable)))
    with pytest.raises(ConfigError, match="no layer named 'q_proj'.*valid choices: qkv, out, up, down"):
        options(base_dir, task, tmp_path / "c", lora={"target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="lora.rank: rank 65 exceeds the smallest dimension"):
        finetune(options(base_dir, task, tmp_path / "d", lora={"rank": 65}))
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(UserError, match="not a readable slmtrain checkpoint"):
        finetune(options(not_a_model, task, tmp_path / "e"))


def test_command_line_trains_and_reports_one_line_errors(base_dir, task, tmp_path):
    command = [sys.executable, str(REPO_ROOT / "launch" / "finetune.py"), "recipe=personalize_lora",
               f"model={base_dir}", f"data={task['train.jsonl']}", f"run_dir={tmp_path}", "max_steps=2", "seq_len=64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["method"] == "lora" and summary["outputs"]["adapter"] == str(tmp_path / "adapter")
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 2
    done = subprocess.run([*command, "method=sgd"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert diagnostics(done.stderr).strip().splitlines() == [
        "error: method: invalid value 'sgd'; valid choices: full, lora, dora, qlora, mezo, mezo_lora, all"]
