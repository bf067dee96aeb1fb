"""The work behind the inference routes: wire request -> engine request -> OpenAI response or SSE stream.

A streamed response starts only once the worker has loaded the model and read the prompt, so an unknown
model or a prompt longer than the context is still an HTTP error status, never a broken stream. An error
after the first chunk (rare: the worker died) is sent as one last ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from common.errors import ServiceUnavailable, TrainyardError
from common.openai_errors import from_exception
from common.schemas.inference import (
    SSE_HEADERS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ExportRequest,
    ExportResult,
    PlaygroundGenerate,
    PlaygroundResult,
    Usage,
    new_id,
    now,
)
from common.settings import Settings
from services.inference.engine import Exported, ExportJob, Finished, GenerationRequest, ModelRef, Started, Text
from services.inference.engine_client import EngineClient


def merged_uri(adapter_uri: str) -> str:
    """Where an adapter's merged weights go by default: a sibling prefix, ``<adapter>-merged``."""
    return adapter_uri.rstrip("/") + "-merged"


def _sse(payload: Any) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


class _Run:
    """One generation: the Started event already received, the rest still to come."""

    def __init__(self, events: AsyncIterator[tuple[Any, ...]], started: Started) -> None:
        self.events, self.started = events, started
        self.finished: Finished | None = None

    async def texts(self) -> AsyncIterator[str]:
        async for msg in self.events:
            event = msg[2] if msg[0] == "event" else None
            if isinstance(event, Text):
                yield event.text
            elif isinstance(event, Finished):
                self.finished = event

    def usage(self) -> Usage:
        done = self.finished or Finished("stop", 0, 0.0)
        return Usage(prompt_tokens=self.started.prompt_tokens, completion_tokens=done.completion_tokens,
                     total_tokens=self.started.prompt_tokens + done.completion_tokens)


class InferenceServing:
    def __init__(self, engine: EngineClient, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    async def _start(self, caller: str, request: GenerationRequest) -> _Run:
        events = self.engine.submit("generate", caller, request)
        async for msg in events:
            if msg[0] == "event" and isinstance(msg[2], Started):
                return _Run(events, msg[2])
        raise ServiceUnavailable("the inference worker ended the request without an answer")

    def _request(self, ref: ModelRef, body: ChatCompletionRequest | CompletionRequest) -> GenerationRequest:
        max_tokens = body.limit() or self.settings.inference_default_max_tokens
        common: dict[str, Any] = dict(
            model=ref, max_tokens=max_tokens, min_tokens=min(body.min_tokens, max_tokens),
            temperature=body.temperature, top_p=body.top_p, stop=body.stops(), seed=body.seed,
        )
        if isinstance(body, ChatCompletionRequest):
            return GenerationRequest(messages=[{"role": m.role, "content": m.text()} for m in body.messages], **common)
        return GenerationRequest(prompt=body.text(), **common)

    async def chat(self, ref: ModelRef, caller: str, body: ChatCompletionRequest) -> ChatCompletion | StreamingResponse:
        run = await self._start(caller, self._request(ref, body))
        rid, created = new_id("chatcmpl"), now()
        if not body.stream:
            text = "".join([t async for t in run.texts()])
            reason = run.finished.finish_reason if run.finished else "stop"
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)
            return ChatCompletion(id=rid, created=created, model=body.model, choices=[choice], usage=run.usage())

        def chunk(delta: Delta, reason: str | None = None) -> bytes:
            choice = ChunkChoice(delta=delta, finish_reason=reason)
            return _sse(ChatCompletionChunk(id=rid, created=created, model=body.model, choices=[choice]).model_dump_json())

        async def chunks() -> AsyncIterator[bytes]:
            yield chunk(Delta(role="assistant", content=""))
            async for text in run.texts():
                yield chunk(Delta(content=text))
            yield chunk(Delta(), run.finished.finish_reason if run.finished else "stop")
            if body.stream_options and body.stream_options.include_usage:
                usage = ChatCompletionChunk(id=rid, created=created, model=body.model, choices=[], usage=run.usage())
                yield _sse(usage.model_dump_json())

        return _stream(chunks())

    async def complete(self, ref: ModelRef, caller: str, body: CompletionRequest) -> Completion | StreamingResponse:
        run = await self._start(caller, self._request(ref, body))
        rid, created = new_id("cmpl"), now()

        def completion(text: str, reason: str | None, usage: Usage | None = None, choices: bool = True) -> Completion:
            choice = [CompletionChoice(text=text, finish_reason=reason)] if choices else []
            return Completion(id=rid, created=created, model=body.model, choices=choice, usage=usage)

        if not body.stream:
            text = "".join([t async for t in run.texts()])
            return completion(text, run.finished.finish_reason if run.finished else "stop", run.usage())

        async def chunks() -> AsyncIterator[bytes]:
            async for text in run.texts():
                yield _sse(completion(text, None).model_dump_json())
            yield _sse(completion("", run.finished.finish_reason if run.finished else "stop").model_dump_json())
            if body.stream_options and body.stream_options.include_usage:
                yield _sse(completion("", None, run.usage(), choices=False).model_dump_json())

        return _stream(chunks())

    async def playground(self, ref: ModelRef, caller: str, body: PlaygroundGenerate) -> PlaygroundResult:
        request = GenerationRequest(
            model=ref, max_tokens=body.max_new_tokens, prompt=body.prompt,
            messages=[{"role": "user", "content": body.prompt}],
            temperature=body.temperature, top_p=body.top_p,
        )
        run = await self._start(caller, request)
        text = "".join([t async for t in run.texts()])
        done = run.finished or Finished("stop", 0, 0.0)
        return PlaygroundResult(generated_text=text, tokens_generated=done.completion_tokens,
                                generation_time_ms=round(done.generation_seconds * 1000))

    async def export(self, caller: str, body: ExportRequest) -> ExportResult:
        job = ExportJob(ModelRef(body.base_model, body.adapter_uri), body.output_uri or merged_uri(body.adapter_uri))
        done: Exported = await self.engine.call("export", caller, job)
        return ExportResult(output_uri=done.output_uri, files=done.files, size_bytes=done.size_bytes, seconds=done.seconds)

    async def loaded(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = await self.engine.call("loaded", "", None)
        return result


def _stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    async def with_done() -> AsyncIterator[bytes]:
        try:
            async for c in chunks:
                yield c
        except TrainyardError as e:  # after the first chunk the status is sent; report in the stream
            yield _sse(bytes(from_exception(e).body).decode())
        yield _sse("[DONE]")

    return StreamingResponse(with_done(), media_type="text/event-stream", headers=SSE_HEADERS)
