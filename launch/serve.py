"""Serve a model over an OpenAI-compatible HTTP API (completions, chat completions, streaming, logprobs).

    python launch/serve.py model=PATH [host=127.0.0.1 port=8000 api_key=KEY name=ID max_queue=16
                                       request_timeout_s=60 max_body_bytes=1000000]
    model: an slmtrain run/checkpoint, an HF directory or a preset. Any OpenAI client then talks to
    http://HOST:PORT/v1 (with api_key=, every request needs "Authorization: Bearer KEY").
"""

from __future__ import annotations

import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent  # launch/ leaves the path: launch/tokenize.py would shadow the stdlib
sys.path[:] = [str(_repo)] + [p for p in sys.path if Path(p or ".").resolve() != _repo / "launch"]

from slmtrain.config import build, cli_main, split_args  # noqa: E402


def main(argv: list[str]) -> int:
    from slmtrain.collab.server import ServeOptions, serve

    _, overrides = split_args(argv)
    serve(build(ServeOptions, overrides, usage="python launch/serve.py model=PATH [port=8000 api_key=KEY]"))
    return 0


if __name__ == "__main__":
    cli_main(main)()
