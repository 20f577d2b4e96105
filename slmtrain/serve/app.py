"""The OpenAI-compatible HTTP application (FastAPI, served by uvicorn) for any model ``load_model`` takes.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream`` as server-sent
events), ``GET /health``. Requests are validated here and decoded by the engine (``slmtrain.serve.engine``). Every
request has a deadline (queue wait included): past it, generation stops and the answer is a 504 error (or an error
event, once a stream has begun). Every failure is an OpenAI-style error object with a 4xx status, never a 500 for
bad input.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmtrain.artifacts import LoadedModel, TextTokenizer
from slmtrain.collab.decoding import Finish, Piece, Step
from slmtrain.config import UserError
from slmtrain.eval import document_prefix_id
from slmtrain.serve.engine import Engine, Job
from slmtrain.serve.schemas import APIError, ChatRequest, CompletionRequest, SamplingRequest, ServeOptions


# -------------------------------------------------------------------------------------------------- application
def create_app(loaded: LoadedModel, options: ServeOptions) -> FastAPI:
    if loaded.tokenizer is None:
        raise UserError(f"{loaded.source} has no tokenizer: serving text needs one")
    tokenizer: TextTokenizer = loaded.tokenizer
    context = loaded.model.config.max_seq_len
    engine = Engine(loaded, options.max_queue, options.max_batch)
    created = int(time.time())

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="slmtrain", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    if options.api_key:
        app.add_middleware(BearerAuth, api_key=options.api_key)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": options.model_id, "queued": engine.jobs.qsize(),
                "decoding": len(engine.active), "max_batch": options.max_batch, "largest_batch": engine.largest_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": options.model_id, "object": "model", "created": created, "owned_by": "slmtrain"}]}

    def new_job(body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None, default_max: int,
                top_n: int) -> Job:
        if body.model != options.model_id:
            raise APIError(404, f"model {body.model!r} does not exist; this server has {options.model_id!r}",
                           param="model", code="model_not_found")
        if len(prompt_ids) >= context:
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; the model's context is {context} tokens "
                                "and needs room for at least one new token", param="messages" if
                           isinstance(body, ChatRequest) else "prompt", code="context_length_exceeded")
        room = context - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise APIError(400, f"max_tokens={max_tokens} does not fit: the prompt takes {len(prompt_ids)} of the "
                                f"context's {context} tokens, leaving {room}", param="max_tokens",
                           code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        job = Job(prompt_ids, max_tokens or min(default_max, room), body.temperature, body.top_p, body.stops(),
                  body.seed, top_n, time.monotonic() + options.request_timeout_s, loop)
        engine.submit(job)
        return job

    async def events(job: Job) -> AsyncIterator[Piece | Finish]:
        """The job's events until its Finish; a deadline or an engine error ends it as an APIError."""
        try:
            while True:
                wait = job.deadline - time.monotonic() + 5.0  # the worker notices the deadline itself first
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=max(wait, 0.1))
                except TimeoutError:
                    event = Finish("timeout")
                if isinstance(event, APIError):
                    raise event
                if isinstance(event, Finish) and event.reason == "timeout":
                    raise APIError(504, f"the request did not finish within {options.request_timeout_s} s",
                                   "timeout_error", code="timeout")
                yield event
                if isinstance(event, Finish):
                    return
        finally:
            job.cancelled.set()  # a stream whose client left stops generating at the next token

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        prompt_ids = [document_prefix_id(tokenizer), *tokenizer.encode(body.prompt)]
        job = new_job(body, prompt_ids, body.max_tokens, 16, body.logprobs or 0)  # OpenAI's default max_tokens
        reply = _Reply("cmpl", "text_completion", options.model_id, tokenizer, len(prompt_ids))

        def choice(text: str, steps: list[Step], finish: str | None, offset: int, first: bool) -> dict[str, Any]:
            logprobs = None if body.logprobs is None else reply.legacy_logprobs(steps, offset)
            return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

        return await reply.answer(events(job), body.stream, choice)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        prompt_ids = chat_prompt_ids(tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
        top_n = body.top_logprobs or 0
        job = new_job(body, prompt_ids, body.max_completion_tokens or body.max_tokens, context, top_n)
        reply = _Reply("chatcmpl", "chat.completion", options.model_id, tokenizer, len(prompt_ids))

        def choice(text: str, steps: list[Step], finish: str | None, offset: int, first: bool) -> dict[str, Any]:
            logprobs = {"content": reply.chat_logprobs(steps, top_n)} if body.logprobs else None
            if body.stream:  # the first chunk names the role, the last one (finish_reason set) has an empty delta
                delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
                return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish}

        return await reply.answer(events(job), body.stream, choice)

    return app


def chat_prompt_ids(tokenizer: TextTokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The tokenizer's own chat template when it has one (Hugging Face tokenizers), else a plain transcript
    ("role: content" lines, then "assistant:") after the document-start token."""
    inner = getattr(tokenizer, "inner", None)
    if getattr(inner, "chat_template", None):
        ids = tokenizer.encode(inner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        start = document_prefix_id(tokenizer)
        return ids if ids[:1] == [start] else [start, *ids]
    transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return [document_prefix_id(tokenizer), *tokenizer.encode(transcript)]


Choice = Callable[[str, list[Step], str | None, int, bool], dict[str, Any]]  # (text, steps, finish, offset, first)


class _Reply:
    """Builds one request's response objects, whole or as server-sent event chunks."""

    def __init__(self, prefix: str, kind: str, model_id: str, tokenizer: TextTokenizer, prompt_tokens: int):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind, self.model_id, self.tokenizer, self.prompt_tokens = kind, model_id, tokenizer, prompt_tokens
        self.created = int(time.time())

    def envelope(self, choice: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id, "choices": [choice]}

    def usage(self, finish: Finish) -> dict[str, int]:
        completion = len(finish.steps)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def answer(self, events: AsyncIterator[Piece | Finish], stream: bool, choice: Choice) -> Any:
        first = await anext(events)  # errors before the first event (a timeout in the queue) are plain 4xx/5xx
        if stream:
            return StreamingResponse(self.sse(first, events, choice), media_type="text/event-stream")
        pieces = [first]
        while not isinstance(pieces[-1], Finish):
            pieces.append(await anext(events))
        finish = pieces.pop()
        text = "".join(p.text for p in pieces)
        steps = [s for p in pieces for s in p.steps]
        assert isinstance(finish, Finish)
        return {**self.envelope(choice(text, steps, finish.reason, 0, True), self.kind), "usage": self.usage(finish)}

    async def sse(self, event: Piece | Finish, events: AsyncIterator[Piece | Finish],
                  choice: Choice) -> AsyncIterator[str]:
        kind = f"{self.kind}.chunk" if self.kind == "chat.completion" else self.kind
        offset, first = 0, True
        try:
            while not isinstance(event, Finish):
                yield _sse(self.envelope(choice(event.text, event.steps, None, offset, first), kind))
                offset, first = offset + len(event.text), False
                event = await anext(events)
            yield _sse({**self.envelope(choice("", [], event.reason, offset, first), kind), "usage": self.usage(event)})
        except APIError as e:  # headers are sent: the error travels as an event, which the openai client raises
            yield _sse(e.body())
        finally:
            await events.aclose()  # a client that left mid-stream stops the generation
        yield "data: [DONE]\n\n"

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def legacy_logprobs(self, steps: list[Step], offset: int) -> dict[str, Any]:
        tokens = [self.token_text(s.token) for s in steps]
        offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        return {"tokens": tokens, "token_logprobs": [s.logprob for s in steps],
                "top_logprobs": [{self.token_text(t): lp for t, lp in s.top} for s in steps], "text_offset": offsets}

    def chat_logprobs(self, steps: list[Step], top_n: int) -> list[dict[str, Any]]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top[:top_n]]}
                for s in steps]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


# ------------------------------------------------------------------------------------------- middleware, errors
class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer KEY`` (constant-time comparison)."""

    def __init__(self, app: Any, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                 "authentication_error", code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413, whether announced by Content-Length or not
    (the body is read up to the limit before the application sees it)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await too_large.response()(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client disconnected
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await too_large.response()(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:  # after the body the application only waits for a disconnect
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return APIError(400, f"the body is not valid JSON: {first.get('msg')}").response()
        param = ".".join(where) or None
        return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail)).response()


# --------------------------------------------------------------------------------------------------- running it
def serve(options: ServeOptions) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from slmtrain.artifacts import load_model

    app = create_app(load_model(options.model), options)
    try:  # bound here, so that a port in use or an unknown host is one line before "serving" is ever printed
        family, kind, _, _, address = socket.getaddrinfo(options.host, options.port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            listener.bind(address)
            listener.listen()
        except OSError:
            listener.close()
            raise
    except OSError as e:
        raise UserError(f"cannot listen on {options.host}:{options.port}: {e.strerror or e}") from None
    print(f"serving {options.model_id} on http://{options.host}:{options.port}/v1"
          + (" (API key required)" if options.api_key else ""), flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    finally:
        listener.close()
