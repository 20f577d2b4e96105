from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForCausalLM

from slmtrain.config import ConfigError, UserError
from slmtrain.train.callbacks import read_metrics
from slmtrain.train.config import load_recipe, recipe_names
from slmtrain.train.run import plan, train
from tests.conftest import tiny_recipe
from tests.output import diagnostics

REPO = Path(__file__).resolve().parents[2]


def train_losses(run_dir: Path) -> dict[int, str]:
    """step -> train_loss exactly as written (strings: bit-for-bit comparison)."""
    return {int(r["step"]): r["train_loss"] for r in read_metrics(run_dir / "metrics.csv") if r["train_loss"]}


def test_loss_decreases_validation_runs_and_export_loads(shards, tmp_path):
    config = tiny_recipe(shards, tmp_path / "run", budget__tokens=512 * 24)
    result = train(config)
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 25))
    first, last = [float(losses[s]) for s in (1, 2, 3)], [float(losses[s]) for s in (22, 23, 24)]
    assert sum(last) / 3 < sum(first) / 3 - 0.5
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(512)
    assert 0 < result["val_unigram_entropy"] < math.log(512)
    val_rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["val_loss"]]
    assert [int(r["step"]) for r in val_rows] == [8, 16, 24]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    assert hf.config.vocab_size == 512
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["tokens"] == 512 * 24
    from slmtrain.artifacts import load_model

    loaded = load_model(tmp_path / "run")  # a run directory loads through its HF export, with its tokenizer
    assert loaded.source == f"hf {tmp_path / 'run' / 'hf'}" and loaded.tokenizer is not None
    assert loaded.tokenizer.processor is not None  # the SentencePiece model travels with the export (GGUF vocab)
    (tmp_path / "run" / "hf" / "config.json").unlink()  # without the export: the last checkpoint
    assert load_model(tmp_path / "run").source.startswith("checkpoint")


RUN_STEPS = 48  # steps take milliseconds: a long enough run leaves time to kill it mid-way


def _launch(shards: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, str(REPO / "launch" / "train.py"), "recipe=demo", f"run_dir={run_dir}",
        "model.preset=tiny", "model.vocab_size=512", "model.max_seq_len=64", f"data.shards={shards}",
        "data.build=none", "data.seq_len=64", "data.val_samples=8", "batch.tokens=512", "batch.micro_batch=2",
        "optim.lr=1e-2", "schedule.kind=cosine", "schedule.warmup_steps=2", "budget.policy=fixed",
        f"budget.tokens={512 * RUN_STEPS}", "trainer.enable_progress_bar=false", "log_every_n_steps=1",
        "val_every_n_steps=8", "ckpt_every_n_steps=4", "samples=0", "export_hf=false", "eval.tasks=[]", *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def uninterrupted_losses(shards, tmp_path_factory) -> dict[int, str]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    reference = _launch(shards, run_dir)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, RUN_STEPS + 1))
    return losses


def test_sigkill_then_resume_logs_identical_losses(shards, tmp_path, uninterrupted_losses):
    kill_after = 6  # the resume is from step 4's checkpoint: early in the run, where the data order once broke
    killed_dir = tmp_path / "killed"
    victim = _launch(shards, killed_dir)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill after a checkpoint, before the end
        if (killed_dir / "metrics.csv").is_file() and max(train_losses(killed_dir), default=0) >= kill_after:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert max(train_losses(killed_dir)) < RUN_STEPS, "the run finished before it could be killed"

    resumed = _launch(shards, killed_dir, "ckpt=last")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert train_losses(killed_dir) == uninterrupted_losses
    lrs = [float(r["lr"]) for r in read_metrics(killed_dir / "metrics.csv") if r["lr"]]
    assert lrs[0] == pytest.approx(1e-2 / 2)  # warmup: step 1 trains at (0 + 1) / 2 of the peak


def test_resume_without_checkpoint_and_overwrite_are_clear_errors(shards, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train(tiny_recipe(shards, tmp_path / "none"), resume=True)
    train(tiny_recipe(shards, tmp_path / "done", budget__tokens=512 * 4))
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_recipe(shards, tmp_path / "done", budget__tokens=512 * 4))


class CorruptLoss(Callback):
    """Makes the loss of the batches at the given optimizer steps NaN."""

    def __init__(self, steps: set[int]):
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        original = type(pl_module).loss
        bad = trainer.global_step in self.steps
        pl_module.loss = (lambda b: original(pl_module, b) * float("nan")) if bad else (lambda b: original(pl_module, b))


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(shards, tmp_path):
    config = tiny_recipe(shards, tmp_path / "run")
    with pytest.raises(UserError, match=r"non-finite loss .* at step 6.*last good checkpoint"):
        train(config, callbacks=[CorruptLoss({6})])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_nan_loss_skip_policy_skips_and_finishes(shards, tmp_path):
    config = tiny_recipe(shards, tmp_path / "run", nan_policy="skip", batch__micro_batch=8)
    result = train(config, callbacks=[CorruptLoss({3})])
    assert result["steps"] == 16  # the skipped batch's step updates nothing; the run still ends on time
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == [s for s in range(1, 17) if s != 4]  # optimizer step 3 is logged as step 4
    assert all(math.isfinite(float(v)) for v in losses.values())


def test_every_recipe_loads_and_plans():
    assert {"demo", "1b_overtrain", "125m_deepthin", "350m_deepthin", "chinchilla"} <= set(recipe_names())
    for name in recipe_names():
        p = plan(load_recipe(name))
        assert p.params > 0 and p.tokens > 0 and p.steps > 0


def test_1b_overtrain_dry_run_shows_size_and_budget():
    out = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "recipe=1b_overtrain", "dry_run=json"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    p = json.loads(out)
    assert 0.9e9 < p["params"] < 1.3e9
    assert p["tokens_per_param"] > 200  # far past Chinchilla's ~20
    assert p["steps"] == math.ceil(p["tokens"] / p["batch_tokens"])
    assert any("Sardana" in line for line in p["budget_reasoning"])


def test_bad_recipe_keys_fail_naming_the_key():
    with pytest.raises(ConfigError, match="optim.lr_max: unknown key; valid keys: .*lr"):
        load_recipe("demo", {"optim": {"lr_max": 1}})
    with pytest.raises(ConfigError, match="schedule.kind: invalid value 'linear'; valid choices: cosine, wsd, constant"):
        load_recipe("demo", {"schedule": {"kind": "linear"}})
    with pytest.raises(ConfigError, match="batch.tokens: 1000 is not a multiple"):
        from slmtrain.train.run import gradient_accumulation

        gradient_accumulation(load_recipe("demo", {"batch": {"tokens": 1000}}), world=1)
    with pytest.raises(ConfigError, match="model.preset: unknown preset 'nonexist'; valid choices: demo-2m"):
        load_recipe("demo", {"model": {"preset": "nonexist"}})
    with pytest.raises(ConfigError, match="trainer.max_steps: must be >= 1 .or -1"):  # was silently ignored
        load_recipe("demo", {"trainer": {"max_steps": -5}})
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "recipe=nope"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2 and diagnostics(proc.stderr).startswith("error: recipe: unknown recipe 'nope'; valid choices:")
    unknown = subprocess.run([sys.executable, "-m", "slmtrain", "trian"], capture_output=True, text=True, cwd=REPO)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown command 'trian'; valid choices: train,")
    dry = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "batch.tokens=1000", "dry_run=true"],
                         capture_output=True, text=True, cwd=REPO)  # the dry run refuses what the run would
    assert dry.returncode == 2 and diagnostics(dry.stderr).startswith("error: batch.tokens: 1000 is not a multiple")


def test_ddp_two_processes_see_each_sample_once(shards, tmp_path):
    from slmtrain.data.shards import open_split
    from slmtrain.train.data import PackedSamples, epoch_order

    run_dir = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "train" / "ddp_audit.py"), str(shards), str(run_dir)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [(run_dir / f"seen_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 32  # 8 steps x 512 tokens / 64 per sample / 2 ranks
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 64
    # Together the ranks trained on exactly the first 64 samples of the (seed, epoch 0) order.
    import hashlib

    dataset = PackedSamples(open_split(shards, "train"), 64)
    order = epoch_order(len(dataset), 1337, 0)[:64]
    expected = {hashlib.sha1(dataset[int(i)].numpy().tobytes()).hexdigest() for i in order}
    assert set(seen[0] + seen[1]) == expected


def test_grid_expands_to_one_run_per_combination():
    from slmtrain.train.config import expand_grid

    runs = expand_grid({"optim": {"lr": 1e-3}, "grid": {"optim": {"weight_decay": [0.0, 0.1]}, "model": {"n_layer": [2, 4, 6]}}})
    assert len(runs) == 6
    assert runs[0] == ("optim.weight_decay=0.0,model.n_layer=2", {"optim": {"lr": 1e-3, "weight_decay": 0.0}, "model": {"n_layer": 2}})
    assert expand_grid({"seed": 1}) == [("", {"seed": 1})]
    with pytest.raises(ConfigError, match="grid.seed: must be a non-empty list"):
        expand_grid({"grid": {"seed": 3}})
    out = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "run_dir=runs/g", "grid.model.n_layer=[2,4]",
                          "dry_run=json"], capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines()
    plans = [json.loads(line) for line in out]
    assert [p["name"] for p in plans] == ["model.n_layer=2", "model.n_layer=4"]
    assert plans[0]["params"] < plans[1]["params"]


def test_tensorboard_and_offline_wandb_loggers_write_runs(shards, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_recipe(shards, tmp_path / "run", loggers=["csv", "tensorboard", "wandb"], budget__tokens=512 * 4,
                         export_hf=False, samples=0)
    train(config)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_fsdp_on_cpu_is_a_clear_error(shards, tmp_path):
    config = tiny_recipe(shards, tmp_path / "run", strategy="fsdp", trainer={"accelerator": "cpu"})
    with pytest.raises(ConfigError, match="strategy: fsdp needs GPUs"):
        train(config)


def test_missing_demo_shards_are_built_by_curation_and_tokenizer(tmp_path, monkeypatch):
    """data.build=demo: the demo pipeline and the tokenizer run first (on a smaller demo source here)."""
    import functools

    import slmtrain.data.demo as demo
    from slmtrain.orchestrate import ensure_data
    from slmtrain.train.data import require_shards

    monkeypatch.setattr(demo, "write_demo_documents", functools.partial(demo.write_demo_documents, target_chars=600_000))
    config = load_recipe("demo", {"data": {"shards": str(tmp_path / "shards"), "curated": str(tmp_path / "curated"),
                                           "build": "demo"}}).data
    shards = ensure_data(config)
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["vocab_size"] == 4096 and meta["splits"]["train"]["tokens"] > 100_000
    assert json.loads((tmp_path / "curated" / "stats.json").read_text())["totals"]["balanced"]
    assert ensure_data(config) == shards  # present now: nothing is rebuilt
    assert (shards / "tokenizer" / "tokenizer.model").is_file()  # the shards carry their tokenizer
    with pytest.raises(UserError, match="no token shards"):
        require_shards(load_recipe("demo", {"data": {"shards": str(tmp_path / "none"), "build": "none"}}).data)


def test_a_given_shards_path_is_never_built(tmp_path):
    """Naming data.shards without data.build turns the recipe's demo build off: nothing is created there."""
    from slmtrain.orchestrate import ensure_data

    config = load_recipe("demo", {"data": {"shards": str(tmp_path / "absent" / "shards")}})
    assert config.data.build == "none"
    ensure_data(config.data)
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and what Slurm or kill sends
def test_a_stop_signal_writes_a_checkpoint_and_the_resume_is_exact(shards, tmp_path, uninterrupted_losses, stop_signal):
    run_dir = tmp_path / "interrupted"
    victim = _launch(shards, run_dir, "ckpt_every_n_steps=1000")  # no periodic checkpoint: only the interrupt's
    deadline = time.time() + 300
    while time.time() < deadline and max(train_losses(run_dir) if (run_dir / "metrics.csv").is_file() else {0: ""}) < 5:
        time.sleep(0.02)
    victim.send_signal(stop_signal)
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == 130, out
    stopped = max(train_losses(run_dir))
    assert stopped < RUN_STEPS, "the run finished before it could be interrupted"
    assert f"{stop_signal.name}: stopped after step {stopped}" in out and "ckpt=last" in out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stopped
    if stop_signal == signal.SIGTERM:
        return  # the resume below is the same for either signal; SIGINT's run shows it
    resumed = _launch(shards, run_dir, "ckpt_every_n_steps=1000", "ckpt=last")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert train_losses(run_dir) == uninterrupted_losses


def test_corrupted_checkpoint_is_refused_and_an_intact_one_offered(shards, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_recipe(shards, run_dir, budget__tokens=512 * 12, export_hf=False, samples=0))
    last = run_dir / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    last.write_bytes(bytes(data))
    longer = dict(budget__tokens=512 * 16, export_hf=False, samples=0, resume_with_changes=True)
    with pytest.raises(UserError, match=r"last.ckpt is corrupted .* newest intact checkpoint is .*step000012.ckpt"):
        train(tiny_recipe(shards, run_dir, **longer), resume=True)
    from slmtrain.artifacts import load_model

    with pytest.raises(UserError, match="corrupted"):
        load_model(last)
    result = train(tiny_recipe(shards, run_dir, **longer), resume=run_dir / "checkpoints" / "step000012.ckpt")
    assert result["steps"] == 16


def test_resume_with_other_schedule_settings_is_refused(shards, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_recipe(shards, run_dir, budget__tokens=512 * 4, export_hf=False, samples=0))
    with pytest.raises(ConfigError, match=r"budget.tokens: differs from the run being resumed \(budget.tokens: 2048.0 -> 4096"):
        train(tiny_recipe(shards, run_dir, budget__tokens=512 * 8, export_hf=False, samples=0), resume=True)
    changed = tiny_recipe(shards, run_dir, budget__tokens=512 * 8, export_hf=False, samples=0, resume_with_changes=True,
                          log_every_n_steps=2)
    assert train(changed, resume=True)["steps"] == 8


def test_a_resume_missing_the_runs_config_or_tokenizer_is_refused(shards, tmp_path):
    """Without train_config.json or the run's tokenizer the resume could not be checked: refused, not let through."""
    run_dir = tmp_path / "run"
    short = dict(budget__tokens=512 * 4, export_hf=False, samples=0)
    train(tiny_recipe(shards, run_dir, **short))
    saved = (run_dir / "train_config.json").read_bytes()
    (run_dir / "train_config.json").unlink()
    with pytest.raises(UserError, match="train_config.json is missing"):
        train(tiny_recipe(shards, run_dir, **short, optim__lr=0.05), resume=True)
    (run_dir / "train_config.json").write_bytes(saved)
    (run_dir / "tokenizer" / "tokenizer.model").unlink()
    with pytest.raises(UserError, match="tokenizer.model is missing"):
        train(tiny_recipe(shards, run_dir, **short), resume=True)


def test_shards_whose_tokenizer_changed_or_whose_ids_are_corrupt_are_refused(shards, tmp_path):
    """A tokenizer file trained again after the shards were written, or an id beyond the vocabulary written over a
    shard, stops the run before its first step with one line."""
    import shutil

    from slmtrain.tokenizer import TokenizerSpec, train_tokenizer

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    meta = json.loads((copy / "meta.json").read_text())
    train_tokenizer(TokenizerSpec(vocab_size=300, sample_sentences=2000), ["some other text"] * 50 + [
        "to train a different tokenizer"] * 50, tmp_path / "other")
    other = str(tmp_path / "other" / "tokenizer.model")
    (copy / "meta.json").write_text(json.dumps({**meta, "tokenizer_model": other}))
    short = dict(budget__tokens=512 * 4, export_hf=False, samples=0)
    with pytest.raises(UserError, match="changed after .* was written with it"):
        train(tiny_recipe(copy, tmp_path / "run", **short))
    (copy / "meta.json").write_text(json.dumps(meta))
    shard = next(iter((copy / "train").glob("*.bin")))
    tokens = np.memmap(shard, dtype=np.uint16, mode="r+")
    tokens[len(tokens) // 2] = 60_000
    tokens.flush()
    with pytest.raises(UserError, match="token id 60000 >= vocab_size 512"):
        train(tiny_recipe(copy, tmp_path / "run2", **short))


def test_a_moved_run_keeps_its_tokenizer_and_loads_without_shards(tmp_path):
    """Copy a finished run elsewhere, delete its shards and their tokenizer: it still loads, exports, evaluates."""
    import shutil

    from slmtrain.artifacts import load_model
    from slmtrain.data.shards import prepare_shards

    raw = tmp_path / "raw"
    raw.mkdir()
    import pydoc_data.topics

    (raw / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_data.topics.topics.values()))
    spec = tmp_path / "tok.yaml"
    spec.write_text("kind: bpe\nvocab_size: 512\nbyte_fallback: true\nseed: 0\n")
    prepare_shards(spec, raw, tmp_path / "shards", val_fraction=0.05)
    train(tiny_recipe(tmp_path / "shards", tmp_path / "run", budget__tokens=512 * 4, samples=0))
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")
    shutil.rmtree(tmp_path / "run")
    shutil.rmtree(tmp_path / "shards")
    moved = tmp_path / "elsewhere" / "run"
    for spec_ in (moved, moved / "checkpoints" / "last.ckpt"):
        loaded = load_model(spec_)
        assert loaded.tokenizer is not None and loaded.tokenizer.decode(loaded.tokenizer.encode("def f(x):")) == "def f(x):"
        assert loaded.tokenizer.bos_id == loaded.tokenizer.eos_id  # documents start after EOS, as in training
    (tmp_path / "held_out.txt").write_text("The for statement is used to iterate over the elements of a sequence.")
    commands = (["export_hf.py", f"model={moved / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'exported'}"],
                ["eval.py", f"model={moved / 'checkpoints' / 'last.ckpt'}", f"text={tmp_path / 'held_out.txt'}"],
                ["bench_device.py", f"model={moved}", "prompt=16", "gen=4", "repeats=1", "format=json"])

    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "launch" / command[0]), *command[1:]], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:  # independent commands, one thread each
        for proc in pool.map(run, commands):
            assert proc.returncode == 0, proc.stdout + proc.stderr
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "exported").config.vocab_size == 512
