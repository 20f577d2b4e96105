"""``slmtrain serve`` from a checkout (the code is slmtrain/cli/serve.py): serve a model over an OpenAI-compatible HTTP API (completions, chat completions, streaming, logprobs)."""

from slmtrain.cli.serve import main

if __name__ == "__main__":
    main()
