#!/usr/bin/env bash
# The one prepared GPU check, for a lent H200 (device tool): run from the repo root as
#   bash bench/gpu_check.sh            (about 3-4 minutes; prints tables; writes $OUT/gpu_check.log when OUT is set)
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
  # 1. The model on the GPU: backends agree, KV cache equals recompute (the CPU tests, on CUDA).
  python3 - <<'PY'
import sys, torch, dataclasses
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
PY
  # 2. Throughput and MFU of a ~1B model, seq 2048, bf16, compile on/off, SDPA vs flash-attn.
  timeout 420 python3 bench/gpu_bench.py preset=llama3.2-1b vocab_size=32000 seq_len=2048 micro_batch=8 steps=12
  # 3. The Lightning path on the GPU: FSDP, bf16-mixed, compile, 30 steps of a 2-layer model on pydoc shards.
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
