"""Serving a model over an OpenAI-compatible HTTP API: request bodies and options (``schemas``), the
continuous-batching engine (``engine``), the FastAPI application and ``serve()`` (``app``), and a server in a
background thread for tests, benchmarks and demos (``background``). Decoding itself (sampling, logprobs, stop
strings) is ``slmtrain.collab.decoding``, shared with routing and speculative decoding."""
