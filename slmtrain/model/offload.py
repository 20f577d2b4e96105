"""Expert offloading: decode a Mixture-of-Experts model that keeps at most ``max_resident_experts`` routed experts per
layer in memory, reading the others on demand from the model's memory-mapped safetensors files ("LLM in a flash",
PowerInfer-2). Each layer holds a least-recently-used cache of experts; everything else (attention, embeddings,
routers, shared experts) stays resident. The arithmetic is that of the resident model, tensor for tensor, so greedy
output is token-identical to it.

The decode-speed prediction adds a storage term to the memory roofline: seconds per token = bytes read from memory /
memory bandwidth + bytes read from storage (cache misses) / storage bandwidth.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from slmtrain.config import ConfigError, UserError
from slmtrain.model.formats.hf import (hf_table, load_hf, model_config_from_hf, read_hf_config, read_hf_expert,
                                       safetensors_files)
from slmtrain.model.formats.mapping import Row
from slmtrain.model.moe import ExpertGroup, MoE
from slmtrain.model.transformer import KVCache, Transformer


@dataclass
class OffloadStats:
    """Cache hits and misses of every layer's experts, and the bytes the misses read from storage."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else float("nan")

    def reset(self) -> None:
        self.hits = self.misses = self.bytes_read = 0


class SafetensorsTensors:
    """Tensors of a Hugging Face directory's safetensors files, opened memory-mapped, each read when asked for."""

    def __init__(self, path: Path):
        self.handles = [safe_open(str(file), framework="pt") for file in safetensors_files(path)]
        self.file_of = {name: handle for handle in self.handles for name in handle.keys()}

    def __call__(self, name: str) -> torch.Tensor:
        return self.file_of[name].get_tensor(name)


class OffloadedExperts(ExpertGroup):
    """One layer's routed experts, at most ``capacity`` of them in memory (least recently used evicted first)."""

    def __init__(self, layer: MoE, tensors: SafetensorsTensors, table: list[Row], index: int, capacity: int,
                 dtype: torch.dtype, stats: OffloadStats):
        super().__init__(layer.num_experts, layer.experts.act, layer.experts.gated)
        self.tensors, self.table, self.index = tensors, table, index
        self.capacity, self.dtype, self.stats = capacity, dtype, stats
        self.cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        if expert in self.cache:
            self.stats.hits += 1
            self.cache.move_to_end(expert)
            return self.cache[expert]
        self.stats.misses += 1
        up, down = read_hf_expert(self.tensors, self.table, self.index, expert)
        self.stats.bytes_read += up.nbytes + down.nbytes  # as stored in the file
        self.cache[expert] = weights = (up.to(self.dtype), down.to(self.dtype))
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return weights

    def resident_bytes(self) -> int:
        return sum(up.nbytes + down.nbytes for up, down in self.cache.values())


def load_offloaded(path: str | Path, max_resident_experts: int,
                   dtype: torch.dtype = torch.float32) -> tuple[Transformer, OffloadStats]:
    """The MoE model of a Hugging Face directory with its routed experts served from the files through per-layer
    caches of ``max_resident_experts``; the stats count every layer's lookups."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"offload=experts needs a Hugging Face model directory (config.json + safetensors): {path}")
    config = model_config_from_hf(read_hf_config(path))
    if config.moe is None:
        raise ConfigError("offload", f"{path} is a dense model: it has no experts to offload")
    if not 0 < max_resident_experts <= config.moe.experts:
        raise ConfigError("max_resident_experts", f"must be between 1 and the model's {config.moe.experts} experts "
                                                  f"per layer, got {max_resident_experts}")
    model = load_hf(path, dtype, experts=False)
    tensors, table, stats = SafetensorsTensors(path), hf_table(config), OffloadStats()
    for index, block in enumerate(model.blocks):
        if isinstance(block.mlp, MoE):
            block.mlp.experts = OffloadedExperts(block.mlp, tensors, table, index, max_resident_experts,
                                                 dtype, stats)
    return model, stats


def resident_weight_bytes(model: Transformer) -> int:
    """Bytes of the weights in memory now: every parameter (tied ones once) and the experts the caches hold."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(layer.experts.resident_bytes() for layer in model.moe_layers())


@torch.no_grad()
def measure_offloaded_decode(model: Transformer, stats: OffloadStats, prompt: int, gen: int, memory_bandwidth: float,
                             storage_bandwidth: float | None, seed: int = 0) -> dict[str, float | int | None]:
    """Prefill ``prompt`` random tokens, then time and count ``gen`` greedy decode steps: tokens/s, cache hit rate,
    bytes from storage per token, and the decode speed the device's memory and storage bandwidths predict from them
    (memory bytes per token: the resident parameters, the active experts and the KV cache at the mean context)."""
    config, layers = model.config, model.moe_layers()
    dtype = next(model.parameters()).dtype
    ids = torch.randint(0, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(seed))
    cache = KVCache(config, 1, prompt + gen, ids.device, dtype)
    logits = model(ids, cache=cache)[:, -1]
    stats.reset()
    start = time.perf_counter()
    for _ in range(gen):
        logits = model(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
    measured = gen / (time.perf_counter() - start)
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    expert_bytes = (3 if config.gated_ffn else 2) * config.d_model * config.expert_ffn_dim * dtype.itemsize
    capacity = layers[0].experts.capacity
    memory_per_token = (params_bytes + config.moe.top_k * len(layers) * expert_bytes
                        + config.kv_cache_bytes_per_token(dtype.itemsize) * (prompt + gen // 2))
    storage_per_token = stats.bytes_read / gen
    predicted = (1 / (memory_per_token / memory_bandwidth + storage_per_token / storage_bandwidth)
                 if storage_bandwidth else None)
    return {"max_resident_experts": capacity, "experts_per_layer": config.moe.experts,
            "resident_weight_bytes": resident_weight_bytes(model),
            "max_resident_weight_bytes": params_bytes + capacity * len(layers) * expert_bytes,
            "cache_hit_rate": stats.hit_rate, "storage_bytes_per_token": storage_per_token,
            "memory_bytes_per_token": memory_per_token, "offload_decode_tokens_per_s": measured,
            "predicted_offload_decode_tokens_per_s": predicted,
            "offload_measured_over_predicted": measured / predicted if predicted else None}
