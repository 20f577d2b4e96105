"""The continuous-batching engine: one worker thread owns the model and decodes up to ``max_batch`` requests
together, one token each per forward pass, each in its own row of a ragged KV cache with its own sampler, so that
they cannot corrupt each other; the others wait in arrival order, up to ``max_queue`` (more get 429). The HTTP side
(``slmtrain.serve.app``) hands it a ``Job`` and reads the job's events back on the event loop."""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch

from slmtrain.artifacts import LoadedModel
from slmtrain.collab.decoding import Finish, Piece, TextRelease, next_step
from slmtrain.model.transformer import KVCache
from slmtrain.serve.schemas import APIError


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
        self.cache = KVCache(self.model.config, max_batch, min(256, self.model.config.max_seq_len), self.device,
                             self.dtype, ragged=True)
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
        self._ensure_room(prompt.shape[1] + 1)
        self.cache.copy_row(len(self.active), own)
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
            self.cache.move_row(last, row)  # which leaves row `last` empty
            self.active[row] = self.active[last]
        else:
            self.cache.clear_row(row)
        self.active.pop()

    def _ensure_room(self, length: int) -> None:
        """Grow the batch's cache (doubling, up to the context) to hold ``length`` positions: memory follows the
        longest request in flight, not the context times the batch."""
        if length > self.cache.max_len:
            self.cache.grow(min(max(length, 2 * self.cache.max_len), self.model.config.max_seq_len))
