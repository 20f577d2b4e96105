"""What a client sends and what a server is told: the options of ``slmtrain serve``, the OpenAI request bodies
(validated strictly, so that a wrong field is a 400 naming it rather than a silent default), and ``APIError``, the
one exception every layer raises to answer with an OpenAI error object ``{"error": {"message", "type", "param",
"code"}}``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from slmtrain.config import ConfigError


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


class SamplingRequest(_Body):
    """The fields completions and chat completions share: which model, how long, how to sample."""

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


class CompletionRequest(SamplingRequest):
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


class ChatRequest(SamplingRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
