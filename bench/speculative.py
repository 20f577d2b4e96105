"""Speculative decoding against the target model alone: acceptance rate and speed-up, greedy, on CPU.

    python bench/speculative.py [draft=runs/collab_demo/small target=runs/collab_demo/large
                                 prompts=runs/collab_demo/test.jsonl limit=100 new_tokens=16 k=4 threads=1]

draft and target: anything load_model takes, with one vocabulary (the defaults are the pair `launch/route.py demo`
trains). Each prompt is decoded by `target.generate` and by `speculative_generate`, alternating, so that machine noise
hits both alike; the outputs must be token-identical. Prints the acceptance rate, both throughputs and the ratio
(speculative / target alone, > 1 is faster).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from slmtrain.artifacts import load_model  # noqa: E402
from slmtrain.collab import speculative_generate  # noqa: E402
from slmtrain.collab.routing import read_examples  # noqa: E402
from slmtrain.config import UserError, build, cli_main, split_args  # noqa: E402
from slmtrain.eval import document_prefix_id  # noqa: E402
from slmtrain.eval.report import format_table  # noqa: E402


@dataclass
class Args:
    draft: str = "runs/collab_demo/small"  # the small model that proposes tokens
    target: str = "runs/collab_demo/large"  # the model whose output is reproduced
    prompts: Path = Path("runs/collab_demo/test.jsonl")  # JSONL with a "prompt" field per line
    limit: int = 100  # prompts used
    new_tokens: int = 16  # tokens generated per prompt (fewer where the context ends first)
    k: int = 4  # tokens drafted per round
    threads: int = 1  # torch CPU threads


def main(argv: list[str]) -> int:
    _, overrides = split_args(argv)
    args = build(Args, overrides)
    torch.set_num_threads(args.threads)
    draft, target = load_model(args.draft), load_model(args.target)
    if target.tokenizer is None:
        raise UserError(f"{target.source} has no tokenizer to encode the prompts")
    prompts = [torch.tensor([[document_prefix_id(target.tokenizer), *target.tokenizer.encode(e.prompt)]])
               for e in read_examples(args.prompts)[: args.limit]]
    alone_s = speculative_s = 0.0
    tokens = accepted = drafted = 0
    for ids in prompts:
        started = time.perf_counter()
        expected = target.model.generate(ids, args.new_tokens, temperature=0)
        alone_s += time.perf_counter() - started
        started = time.perf_counter()
        result = speculative_generate(draft.model, target.model, ids, args.new_tokens, k=args.k)
        speculative_s += time.perf_counter() - started
        if not torch.equal(result.tokens, expected):
            raise AssertionError(f"speculative output differs from the target's on prompt {ids.tolist()}")
        tokens += expected.shape[1] - ids.shape[1]
        accepted, drafted = accepted + result.accepted, drafted + result.drafted
    print(format_table([{
        "draft": draft.source, "target": target.source, "prompts": len(prompts), "new_tokens": tokens, "k": args.k,
        "threads": args.threads, "acceptance": accepted / max(drafted, 1),
        "target_tokens_per_s": tokens / alone_s, "speculative_tokens_per_s": tokens / speculative_s,
        "speedup": alone_s / speculative_s,
    }]))
    return 0


if __name__ == "__main__":
    cli_main(main)()
