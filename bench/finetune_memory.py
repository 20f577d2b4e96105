"""Fine-tuning methods side by side on one model and batch: peak memory (measured in fresh processes, and as the
planner predicts it), seconds per step, validation loss after N steps; and slmtrain's LoRA beside peft's LoRA on
transformers' LlamaForCausalLM with identical weights, adapters and data, their steps alternating.

    python bench/finetune_memory.py [model=smollm2-135m seq_len=64 micro_batch=2 steps=8 threads=1]

The data is the demo personal task as UTF-8 bytes (ids 0-255, inside any vocabulary), so a preset with random
weights needs no tokenizer. Peak memory is what a step adds to the runtime (see slmtrain.adapt.planner).
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "bench"]

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import torch  # noqa: E402

from slmtrain.adapt.data import evaluation_batches, read_examples, training_batches  # noqa: E402
from slmtrain.adapt.methods import HF_LINEARS, METHODS, LoraOptions, hf_adapter_state  # noqa: E402
from slmtrain.adapt.mezo import MezoOptions, ZerothOrder  # noqa: E402
from slmtrain.adapt.personal import write_personal_task  # noqa: E402
from slmtrain.adapt.planner import measure_peak_bytes, no_grad_activation_bytes, peak_above_baseline, predict  # noqa: E402
from slmtrain.adapt.run import DEFAULT_LR, batch_loss, mean_loss, prepare  # noqa: E402
from slmtrain.config import build, parse_overrides  # noqa: E402
from slmtrain.hardware import get_profile  # noqa: E402
from slmtrain.model import presets  # noqa: E402
from slmtrain.model.transformer import Transformer  # noqa: E402

BYTES = types.SimpleNamespace(encode=lambda text: list(text.encode()), bos_id=256, eos_id=257)


@dataclass
class Args:
    model: str = "smollm2-135m"  # a preset, built with random weights (seed 0)
    seq_len: int = 64  # tokens per sequence
    micro_batch: int = 2  # sequences per step
    steps: int = 8  # training steps per method before the validation loss
    threads: int = 1  # torch CPU threads, in this process and the measuring ones
    child: str | None = None  # internal: measure peft + transformers LoRA's peak in this (fresh) process


def hf_lora(model, lora: LoraOptions):
    """peft LoRA on LlamaForCausalLM with the weights and adapters (A and B copied) of slmtrain's LoRA model."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import LlamaForCausalLM

    from slmtrain.model.formats.hf import hf_config, to_hf_state_dict

    hf = LlamaForCausalLM(hf_config(model.config))
    hf.load_state_dict(to_hf_state_dict(base_model(model.base_model.model.config)), strict=False)
    hf.tie_weights()
    targets = [name for layer in lora.target_modules for name in HF_LINEARS[layer][1]]
    wrapped = get_peft_model(hf, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets,
                                            task_type="CAUSAL_LM"))
    set_peft_model_state_dict(wrapped, hf_adapter_state(model, model.base_model.model.config))
    return wrapped


def hf_loss(model, batch) -> torch.Tensor:
    from torch.nn import functional as F

    logits = model(input_ids=batch.inputs).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=-100)


def base_model(config) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config)


def fresh(config, method: str, lora: LoraOptions):
    return prepare(base_model(config), method, lora).train()


def first_order_step(optimizer, loss_of) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def hf_child(args: Args, config, batch) -> dict[str, float]:
    def train(model_config) -> float:
        model = hf_lora(fresh(model_config, "lora", LoraOptions()), LoraOptions()).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        started = time.perf_counter()
        for _ in range(2):
            first_order_step(optimizer, lambda: hf_loss(model, batch))
        return (time.perf_counter() - started) / 2

    import dataclasses

    train(dataclasses.replace(config, n_layer=1))
    return peak_above_baseline(lambda: train(config))


def main(argv: list[str]) -> None:
    import os
    import subprocess

    args = build(Args, parse_overrides(argv))
    torch.set_num_threads(args.threads)
    config = presets.get(args.model)
    lora = LoraOptions()
    with tempfile.TemporaryDirectory() as tmp:
        task = write_personal_task(tmp)
        train_examples, _ = read_examples(task["train.jsonl"], BYTES, args.seq_len)
        val_examples, _ = read_examples(task["val.jsonl"], BYTES, args.seq_len)
    batches = list(zip(range(args.steps), training_batches(train_examples, args.micro_batch, BYTES.bos_id, 0)))
    val = evaluation_batches(val_examples, args.micro_batch, BYTES.bos_id)
    if args.child:
        print(json.dumps(hf_child(args, config, batches[0][1])))
        return

    print(f"{args.model}: {config.params():,} parameters, fp32, batch {args.micro_batch} x {args.seq_len} tokens, "
          f"{args.steps} steps, {args.threads} thread(s); peaks measured in fresh processes")
    profile = get_profile("host")
    rows = {}
    inference = measure_peak_bytes(config, "inference", args.seq_len, args.micro_batch, lora, threads=args.threads)
    predicted_inference = 4 * config.params() + no_grad_activation_bytes(config, args.seq_len * args.micro_batch, False)
    rows["inference"] = {"peak_MB": inference["peak_bytes"] / 1e6, "predicted_MB": predicted_inference / 1e6}
    for method in METHODS:
        measured = measure_peak_bytes(config, method, args.seq_len, args.micro_batch, lora, threads=args.threads)
        plan = predict(config, method, args.seq_len, args.micro_batch, lora, profile)
        model = fresh(config, method, lora)
        if method.startswith("mezo"):
            optimizer = ZerothOrder(model, MezoOptions(), DEFAULT_LR[method], seed=0)
            step = lambda batch: optimizer.step(lambda: batch_loss(model, batch))  # noqa: E731
        else:
            adam = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=DEFAULT_LR[method])
            step = lambda batch: first_order_step(adam, lambda: batch_loss(model, batch))  # noqa: E731
        before = mean_loss(model, val)
        started = time.perf_counter()
        for _, batch in batches:
            step(batch)
        rows[method] = {"peak_MB": measured["peak_bytes"] / 1e6, "predicted_MB": plan.peak_bytes / 1e6,
                        "x_inference": measured["peak_bytes"] / inference["peak_bytes"],
                        "s_per_step": (time.perf_counter() - started) / args.steps,
                        "predicted_s": plan.step_seconds, "val_before": before, "val_after": mean_loss(model, val)}
        del model
        print(method, json.dumps({k: round(v, 3) for k, v in rows[method].items()}), flush=True)

    # slmtrain LoRA against peft + transformers LoRA: same weights, adapters and batches, steps alternating
    ours = fresh(config, "lora", lora)
    theirs = hf_lora(ours, lora).train()
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=DEFAULT_LR["lora"])
                  for m in (ours, theirs)]
    losses_of = [lambda b: batch_loss(ours, b), lambda b: hf_loss(theirs, b)]
    seconds, first_losses = [0.0, 0.0], []
    for index, batch in batches:
        for side in ((0, 1) if index % 2 == 0 else (1, 0)):
            started = time.perf_counter()
            loss = first_order_step(optimizers[side], lambda: losses_of[side](batch))
            seconds[side] += time.perf_counter() - started
            if index == 0:
                first_losses.append(loss)
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.run([sys.executable, __file__, *argv, "child=hf_lora"], capture_output=True, text=True,
                           env=environment, timeout=1200, check=True)
    hf_peak = json.loads(child.stdout.strip().splitlines()[-1])["peak_bytes"]
    with torch.no_grad():
        theirs_val = sum(float(hf_loss(theirs.eval(), b)) * b.target_tokens for b in val) / sum(b.target_tokens for b in val)
    rows["peft+transformers lora"] = {"peak_MB": hf_peak / 1e6, "s_per_step": seconds[1] / args.steps,
                                      "val_after": theirs_val}
    print(f"step-0 loss slmtrain {first_losses[0]:.4f} vs transformers {first_losses[1]:.4f}")
    print(f"LoRA slmtrain / peft+transformers: speed x{seconds[1] / seconds[0]:.2f}, "
          f"peak memory x{rows['lora']['peak_MB'] / rows['peft+transformers lora']['peak_MB']:.2f}, "
          f"alternating val loss {mean_loss(ours, val):.4f} vs {theirs_val:.4f}")
    print(f"MeZO peak / inference peak: x{rows['mezo']['x_inference']:.3f}, MeZO-LoRA x{rows['mezo_lora']['x_inference']:.3f}")
    print(json.dumps({"args": asdict(args), "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1:])
