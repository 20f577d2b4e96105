#!/usr/bin/env bash
# The one prepared GPU check, for a lent H200 (device tool): run from the repo root as
#   bash bench/gpu_check.sh            (about 8-10 minutes; prints tables; writes $OUT/gpu_check.log when OUT is set)
# The device image has torch, lightning, transformers, safetensors; omegaconf (+ antlr4) travels as wheels in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML
# and name .whl in the run's carry.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
log=${OUT:-/tmp}/gpu_check.log
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  # 1. The model on the GPU: backends agree, KV cache equals recompute, the fused loss equals the plain one
  #    (loss and gradients, fp32 and bf16 autocast), the compiled model's fused loss equals the eager one.
  python3 - <<'PY'
import sys, torch, dataclasses
import torch.nn.functional as F
sys.path[0] = "."
from slmtrain.model import presets
from slmtrain.model.transformer import Transformer, KVCache
from slmtrain.model.attention import flash_available
c = presets.get("tiny", max_seq_len=128)
ref = Transformer(c).cuda().eval()
x = torch.randint(0, 256, (2, 100), device="cuda")
for backend in ("eager", "flash"):
    m = Transformer(dataclasses.replace(c, attention_backend=backend)).cuda().eval()
    m.load_state_dict(ref.state_dict())
    print(backend, "max |diff| vs sdpa:", (m(x) - ref(x)).abs().max().item())
cache = KVCache(c, 2, 100, x.device, torch.float32)
inc = torch.cat([ref(x[:, :60], cache=cache), ref(x[:, 60:], cache=cache)], 1)
print("kv-cache max |diff|:", (inc - ref(x)).abs().max().item(), "| flash-attn importable:", flash_available())
torch.manual_seed(0)
m = Transformer(presets.get("tiny", vocab_size=50000, vocab_multiple_of=128, max_seq_len=128)).cuda().train()
ids, targets = torch.randint(0, 50000, (2, 2, 128), device="cuda")
def loss_and_grads(fn):
    m.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.parameters()]
rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
for bf16 in (False, True):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        plain, plain_grads = loss_and_grads(lambda: F.cross_entropy(m(ids).float().flatten(0, 1), targets.flatten()))
        fused, fused_grads = loss_and_grads(lambda: m(ids, targets=targets))
    print(f"fused loss {'bf16' if bf16 else 'fp32'}: loss rel {rel(fused, plain):.2e}, worst gradient rel "
          f"{max(rel(f, p) for f, p in zip(fused_grads, plain_grads)):.2e}")
with torch.autocast("cuda", dtype=torch.bfloat16):
    eager, _ = loss_and_grads(lambda: m(ids, targets=targets))
    m.compile()
    compiled, _ = loss_and_grads(lambda: m(ids, targets=targets))
print(f"compiled fused loss rel to eager (bf16): {rel(compiled, eager):.2e}")
PY
  # 2. Throughput, MFU and peak memory of a ~1B model, vocab 128k, seq 2048, bf16: SDPA vs flash-attn, compile
  #    on/off, fused vs plain loss.
  timeout 480 python3 bench/gpu_bench.py preset=llama3.2-1b vocab_size=128256 seq_len=2048 micro_batch=4 steps=10
  # 3. The Lightning path on the GPU: FSDP, bf16-mixed, compile (per block under FSDP), fused loss and AdamW, 30 steps of a 2-layer model on pydoc shards.
  timeout 240 python3 - <<'PY'
import json, sys, tempfile, pydoc_data.topics
from pathlib import Path
sys.path[0] = "."
from slmtrain.data.shards import prepare_shards
from slmtrain.train.config import load_recipe
from slmtrain.train.run import train
root = Path(tempfile.mkdtemp())
(root / "raw").mkdir()
with (root / "raw" / "docs.jsonl").open("w") as f:
    for i, text in enumerate(pydoc_data.topics.topics.values()):
        f.write(json.dumps({"id": str(i), "text": text}) + "\n")
(root / "tok.yaml").write_text("kind: bpe\nvocab_size: 4096\n")
prepare_shards(root / "tok.yaml", root / "raw", root / "shards", tokenizer_dir=root / "tok", val_fraction=0.05)
config = load_recipe("demo", {"run_dir": str(root / "run"), "strategy": "fsdp", "compile": True,
    "data": {"shards": str(root / "shards"), "build": "none"}, "budget": {"tokens": 30 * 8192},
    "trainer": {"accelerator": "gpu", "devices": 1, "enable_progress_bar": False}, "log_every_n_steps": 10})
print("lightning fsdp:", train(config))
PY
} 2>&1 | tee "$log"
