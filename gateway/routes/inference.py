"""/v1/chat/completions, /v1/completions, /v1/playground/generate and /v1/models/{id}/export.

Thin: authenticate (scope completions.write), resolve the model in the caller's workspace, forward to
the inference service. The OpenAI routes answer errors in OpenAI's shape; bad parameters are 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from common.openai_errors import OPENAI_ERRORS, OpenAIRoute
from common.schemas import ErrorBody, ModelPublic
from common.schemas.inference import (
    SSE_HEADERS,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ExportRequest,
    ExportResult,
    PlaygroundGenerate,
    PlaygroundResult,
)
from gateway import models
from gateway.auth import Principal
from gateway.context import Gateway
from gateway.deps import PUBLIC, GatewayDep
from gateway.models import ServedModel

Writer = Annotated[Principal, Depends(PUBLIC.write)]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 502, 503)}

openai = APIRouter(route_class=OpenAIRoute, responses=OPENAI_ERRORS, tags=["inference"])
router = APIRouter(tags=["inference"], responses=ERRORS)


async def _resolve(gw: Gateway, who: Principal, model_id: str) -> ServedModel:
    return await run_in_threadpool(models.resolve_for_inference, gw, who.workspace_id, model_id)


async def _generate(path: str, body: ChatCompletionRequest | CompletionRequest, who: Principal, gw: Gateway):
    served = await _resolve(gw, who, body.model)
    if body.stream:
        chunks = await gw.inference.stream(path, body, served, who.workspace_id)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
    return await gw.inference.post(path, body, served, who.workspace_id)


@openai.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, who: Writer, gw: GatewayDep) -> ChatCompletion | StreamingResponse:
    """OpenAI chat completions with a base model or a fine-tuned one (`ft:<finetune id>`); `stream: true`
    answers with server-sent events ending in `data: [DONE]`."""
    return await _generate("/v1/chat/completions", body, who, gw)


@openai.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, who: Writer, gw: GatewayDep) -> Completion | StreamingResponse:
    """OpenAI text completions (one prompt)."""
    return await _generate("/v1/completions", body, who, gw)


@router.post("/playground/generate", response_model=PlaygroundResult)
async def playground_generate(body: PlaygroundGenerate, who: Writer, gw: GatewayDep) -> PlaygroundResult:
    """Try a model with one prompt (sent as a user message to chat models)."""
    served = await _resolve(gw, who, body.model_id)
    return PlaygroundResult.model_validate(await gw.inference.post("/v1/playground/generate", body, served, who.workspace_id))


@router.post("/models/{model_id:path}/export", response_model=ModelPublic, tags=["models"])
async def export_model(model_id: str, who: Writer, gw: GatewayDep) -> ModelPublic:
    """Merge a fine-tuned model's LoRA adapter into its base (PEFT `merge_and_unload`) and store full
    weights + tokenizer beside the adapter; the model's `merged_uri` then names them. Takes as long as
    loading the base and writing its weights."""
    served = await _resolve(gw, who, model_id)
    if served.adapter_uri is None:  # nothing to merge: the registry refuses a base model or a full fine-tune
        return await run_in_threadpool(models.record_export, gw, who.workspace_id, model_id, served.base_model)
    request = ExportRequest(base_model=served.base_model, adapter_uri=served.adapter_uri)
    done = ExportResult.model_validate(
        await gw.inference.post("/export", request, None, who.workspace_id, timeout=gw.inference.export_timeout)
    )
    return await run_in_threadpool(models.record_export, gw, who.workspace_id, model_id, done.output_uri)
