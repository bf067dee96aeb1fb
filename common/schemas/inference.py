"""Wire models of the inference API: OpenAI's field names for /v1/chat/completions and /v1/completions,
the playground's for /v1/playground/generate, and the service-only /export.

The gateway validates a request against these same models before it forwards it, so a bad parameter is
answered identically whether a client calls the gateway or the service. Which weights serve a request
travels beside the body, in two headers the gateway sets after resolving ``model`` in the caller's
workspace; without them the service serves ``model`` as a base model (catalog id, hub id or path).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BASE_MODEL_HEADER = "x-trainyard-base-model"
ADAPTER_HEADER = "x-trainyard-adapter-uri"
CALLER_HEADER = "x-trainyard-caller"  # requests are queued fairly across callers (workspaces)
MAX_STOP = 4

FinishReason = Literal["stop", "length"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = Field(default=False, description="Send a last chunk with `usage` before `[DONE]`.")


class _Sampling(_Request):
    """Parameters both OpenAI routes share (OpenAI's names, ranges and defaults)."""

    model: str = Field(min_length=1, description="A base model id or a fine-tuned model id (`GET /v1/models`).")
    max_tokens: int | None = Field(default=None, ge=1, le=32_768, description="Most tokens to generate.")
    min_tokens: int = Field(
        default=0, ge=0, le=32_768,
        description="Fewest tokens to generate: the end of turn cannot end the answer earlier (stop sequences "
        "still can). vLLM's extension; not more than the token limit.",
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(default=1, description="Choices per request; only 1 is supported.")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = Field(
        default=None, description="Up to 4 sequences where generation stops; they are not returned."
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Same seed, same parameters: same sample.")
    stream: bool = Field(default=False, description="Server-sent events in OpenAI's chunk format, ending with `[DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="Accepted for compatibility; not used.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops or None

    @model_validator(mode="after")
    def _min_within_limit(self) -> _Sampling:
        limit = self.limit()
        if limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed the token limit ({limit})")
        return self

    def limit(self) -> int | None:
        return self.max_tokens

    def stops(self) -> list[str]:
        return list(self.stop or [])


class TextPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768, description="Alias of max_tokens.")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="The text to continue (one prompt per request)."
    )

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Completion(BaseModel):
    """Both the whole answer and each streamed chunk (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class PlaygroundGenerate(_Request):
    """Try a model: the prompt is sent as a user message when the model has a chat template."""

    model_id: str = Field(min_length=1, description="A fine-tuned model id or a base model id.")
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)


class PlaygroundResult(BaseModel):
    generated_text: str
    tokens_generated: int
    generation_time_ms: int


class ExportRequest(_Request):
    base_model: str = Field(min_length=1, description="The base the adapter was trained on.")
    adapter_uri: str = Field(min_length=1, description="file:// or s3:// prefix of the LoRA adapter.")
    output_uri: str | None = Field(default=None, description="Where the merged weights go; default: beside the adapter.")


class ExportResult(BaseModel):
    output_uri: str
    files: list[str]
    size_bytes: int
    seconds: float


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a stream
