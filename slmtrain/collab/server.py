"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) for any model ``load_model`` takes.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream`` as server-sent
events), ``GET /health``. One worker thread owns the model and decodes up to ``max_batch`` requests together, one
token each per forward pass, each in its own row of a ragged KV cache with its own sampler, so that they cannot
corrupt each other; the others wait in arrival order. Up to ``max_queue`` wait; more get 429. Every
request has a deadline (queue wait included): past it, generation stops and the answer is a 504 error (or an error
event, once a stream has begun). Every failure is an OpenAI-style error object
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmtrain.artifacts import LoadedModel, TextTokenizer
from slmtrain.collab.decoding import Finish, Piece, Step, TextRelease, next_step
from slmtrain.config import ConfigError, UserError
from slmtrain.eval import document_prefix_id
from slmtrain.model.transformer import KVCache


@dataclass
class ServeOptions:
    model: str  # what load_model takes: an slmtrain run or checkpoint, a Hugging Face directory, a preset name
    host: str = "127.0.0.1"  # interface to listen on; anything else exposes the model beyond this machine
    port: int = 8000  # TCP port
    api_key: str | None = None  # when set, every request needs "Authorization: Bearer KEY" (401 otherwise)
    name: str | None = None  # model id in /v1/models and responses (default: the model path's last part)
    max_batch: int = 8  # requests decoded together, one token each per forward pass; 1 serves them one at a time
    max_queue: int = 16  # requests allowed to wait for the model; more are refused with 429
    request_timeout_s: float = 60.0  # each request's time limit, queue wait included (504 past it)
    max_body_bytes: int = 1_000_000  # larger request bodies are refused with 413

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError("port", f"must be in [0, 65535], got {self.port}")
        for key in ("max_batch", "max_queue", "request_timeout_s", "max_body_bytes"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, f"must be positive, got {getattr(self, key)}")

    @property
    def model_id(self) -> str:
        return self.name or Path(self.model).name


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ------------------------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    # Unknown fields and wrong types are refused (400) rather than silently ignored or coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Sampling(_Body):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    n: Literal[1] = 1
    user: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise APIError(400, "stop strings must be non-empty", param="stop")
        return stops


class CompletionRequest(_Sampling):
    prompt: str
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # legacy API: how many alternatives per token
    echo: Literal[False] = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


# ------------------------------------------------------------------------------------------------------- engine
@dataclass
class Job:
    """One request's generation, handed from the HTTP handler to the worker; events come back on ``events``."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    top_n: int
    deadline: float  # time.monotonic() past which generation stops
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left or timed out

    def emit(self, event: Piece | Finish | APIError) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def keep_going(self) -> bool:
        return not self.cancelled.is_set() and time.monotonic() < self.deadline


@dataclass(eq=False)  # found in the batch by identity
class Active:
    """A job being decoded: its text so far, its sampler, and the token its row feeds next."""

    job: Job
    release: TextRelease
    generator: torch.Generator
    generated: int = 0
    last_token: int = 0


class Engine:
    """The worker thread that owns the model. It decodes up to ``max_batch`` jobs at once, one token for all of them
    per forward pass (continuous batching: a job joins at the next step once its prompt is read, and leaves when it
    finishes); the rest wait in arrival order. Each job has its own row of a ragged KV cache and its own sampler,
    so jobs cannot corrupt each other."""

    def __init__(self, loaded: LoadedModel, max_queue: int, max_batch: int):
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.max_queue, self.max_batch = max_queue, max_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue()  # None: the worker's signal to end
        self.closing = threading.Event()  # shutting down: the jobs in progress stop at their next token
        self.thread = threading.Thread(target=self._run, name="slmtrain-engine", daemon=True)
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.cache = self._new_cache(min(256, self.model.config.max_seq_len))
        self.active: list[Active] = []  # in row order: active[i] decodes in cache row i
        self.ending = False
        self.largest_batch = 0  # the most rows one forward pass has decoded

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job; called from the event loop's thread only, so the size check cannot race another submit."""
        if self.jobs.qsize() >= self.max_queue:
            raise APIError(429, f"server busy: {self.max_queue} requests already wait for the model",
                           "rate_limit_error")
        self.jobs.put_nowait(job)

    def _run(self) -> None:
        with torch.no_grad():
            while not self.ending or self.active:
                self._admit()
                if self.active:
                    try:
                        self._step()
                    except Exception as e:  # a model failure answers the requests in the batch; the server stays up
                        for active in self.active:
                            active.job.emit(APIError(500, f"generation failed: {type(e).__name__}: {e}",
                                                     "server_error"))
                        self.active.clear()

    def _admit(self) -> None:
        """Start waiting jobs while rows are free; block for one only when nothing is being decoded."""
        while not self.ending and len(self.active) < self.max_batch:
            try:
                job = self.jobs.get(block=not self.active)
            except queue.Empty:
                return
            if job is None:
                self.ending = True
                return
            try:
                self._prefill(job)
            except Exception as e:
                job.emit(APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error"))

    def _prefill(self, job: Job) -> None:
        """Read the job's prompt on its own, then give it the next free row of the batch's cache."""
        if not job.keep_going() or self.closing.is_set():
            job.emit(Finish("timeout"))
            return
        prompt = torch.as_tensor([job.prompt_ids], device=self.device)
        self.model.check_token_ids(prompt)
        own = KVCache(self.model.config, 1, prompt.shape[1], self.device, self.dtype)
        logits = self.model(prompt, cache=own)[0, -1]
        row = len(self.active)
        self._ensure_room(prompt.shape[1] + 1)
        self.cache.keys[:, row, :, : own.length] = own.keys[:, 0]
        self.cache.values[:, row, :, : own.length] = own.values[:, 0]
        self.cache.row_lengths[row] = own.length
        generator = torch.Generator().manual_seed(job.seed if job.seed is not None else random.getrandbits(63))
        active = Active(job, TextRelease(self.tokenizer, job.stop), generator)
        self.active.append(active)
        self._take(active, logits)

    def _step(self) -> None:
        """One forward pass over every active row, then each job's next token."""
        rows = len(self.active)
        self.largest_batch = max(self.largest_batch, rows)
        self._ensure_room(int(self.cache.row_lengths[:rows].max()) + 1)
        self.cache.used_rows = rows
        tokens = torch.as_tensor([[a.last_token] for a in self.active], device=self.device)
        logits = self.model(tokens, cache=self.cache)[:, -1]
        for active, row_logits in zip(list(self.active), logits):
            self._take(active, row_logits)

    def _take(self, active: Active, logits: torch.Tensor) -> None:
        """Choose the job's next token and release its text; a job that is done leaves the batch."""
        job, row = active.job, self.active.index(active)
        if not job.keep_going() or self.closing.is_set():
            events = active.release.end("timeout")
        else:
            step = next_step(logits, job.temperature, job.top_p, job.top_n, active.generator)
            active.generated += 1
            active.last_token = step.token
            events = active.release.push(step)
            full = int(self.cache.row_lengths[row]) >= self.model.config.max_seq_len
            if not active.release.finished and (active.generated >= job.max_tokens or full):
                events += active.release.end("length")
        for event in events:
            job.emit(event)
        if active.release.finished:
            self._leave(row)

    def _leave(self, row: int) -> None:
        """Free ``row``: the last active row moves into it, so the active rows stay 0..n-1."""
        last = len(self.active) - 1
        if row != last:
            length = int(self.cache.row_lengths[last])
            self.cache.keys[:, row, :, :length] = self.cache.keys[:, last, :, :length]
            self.cache.values[:, row, :, :length] = self.cache.values[:, last, :, :length]
            self.cache.row_lengths[row] = length
            self.active[row] = self.active[last]
        self.active.pop()

    def _new_cache(self, length: int) -> KVCache:
        return KVCache(self.model.config, self.max_batch, length, self.device, self.dtype, ragged=True)

    def _ensure_room(self, length: int) -> None:
        """Grow the batch's cache (doubling, up to the context) to hold ``length`` positions: memory follows the
        longest request in flight, not the context times the batch."""
        if length <= self.cache.max_len:
            return
        grown = self._new_cache(min(max(length, 2 * self.cache.max_len), self.model.config.max_seq_len))
        grown.keys[:, :, :, : self.cache.max_len] = self.cache.keys
        grown.values[:, :, :, : self.cache.max_len] = self.cache.values
        grown.row_lengths.copy_(self.cache.row_lengths)
        self.cache = grown


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

    def new_job(body: _Sampling, prompt_ids: list[int], max_tokens: int | None, default_max: int,
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
class BackgroundServer:
    """uvicorn serving ``app`` from a daemon thread on a free 127.0.0.1 port: for tests, benchmarks and the routing
    demo. Used as a context manager, it stops (bounded waits) when the block ends."""

    def __init__(self, app: FastAPI, start_timeout_s: float = 60.0):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


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
