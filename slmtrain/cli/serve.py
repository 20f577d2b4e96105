"""Serve a model over an OpenAI-compatible HTTP API (completions, chat completions, streaming, logprobs).

    python launch/serve.py model=PATH [host=127.0.0.1 port=8000 api_key=KEY name=ID max_queue=16
                                       request_timeout_s=60 max_body_bytes=1000000]
    model: an slmtrain run/checkpoint, an HF directory or a preset. Any OpenAI client then talks to
    http://HOST:PORT/v1 (with api_key=, every request needs "Authorization: Bearer KEY").
"""

from __future__ import annotations

from slmtrain.config import announce, build, cli_main, split_args


def run(argv: list[str]) -> int:
    from slmtrain.serve.app import serve
    from slmtrain.serve.schemas import ServeOptions

    _, overrides = split_args(argv)
    serve(announce(build(ServeOptions, overrides, usage="python launch/serve.py model=PATH [port=8000 api_key=KEY]")))
    return 0


main = cli_main(run, "slmtrain.serve.schemas:ServeOptions", doc=__doc__)
