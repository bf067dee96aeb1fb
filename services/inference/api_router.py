"""Thin routes of the inference service. Every route but /health is on ``router`` (one dependency guards them).

OpenAI routes answer errors in OpenAI's shape (``common.openai_errors``); bad parameters are 422, as
on every other Trainyard route. The playground and /export keep the project's error envelope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse

from common.openai_errors import OPENAI_ERRORS, OpenAIRoute
from common.schemas import ErrorBody, Health
from common.schemas.inference import (
    ADAPTER_HEADER,
    BASE_MODEL_HEADER,
    CALLER_HEADER,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ExportRequest,
    ExportResult,
    PlaygroundGenerate,
    PlaygroundResult,
)
from common.service_auth import require_service_token
from common.version import VERSION
from services.inference.engine import ModelRef
from services.inference.serving import InferenceServing


def _serving(request: Request) -> InferenceServing:
    return request.app.state.serving


def _caller(caller: Annotated[str | None, Header(alias=CALLER_HEADER)] = None) -> str:
    return caller or "anonymous"


def _model_ref(
    base: Annotated[str | None, Header(alias=BASE_MODEL_HEADER, description="Set by the gateway.")] = None,
    adapter: Annotated[str | None, Header(alias=ADAPTER_HEADER, description="Set by the gateway.")] = None,
) -> tuple[str | None, str | None]:
    return base, adapter


ServingDep = Annotated[InferenceServing, Depends(_serving)]
CallerDep = Annotated[str, Depends(_caller)]
RefDep = Annotated[tuple[str | None, str | None], Depends(_model_ref)]


def _ref(model: str, ref: tuple[str | None, str | None]) -> ModelRef:
    """The gateway's resolution when it sent one; else ``model`` served as a base model."""
    return ModelRef(ref[0] or model, ref[1] or None)


health_router = APIRouter(tags=["meta"])
router = APIRouter(dependencies=[Depends(require_service_token)])  # the gateway's service credential
openai = APIRouter(route_class=OpenAIRoute, responses=OPENAI_ERRORS, tags=["openai"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 409, 422, 503)}


@health_router.get("/health", response_model=Health)
def health() -> Health:
    return Health(version=VERSION)


@openai.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, serving: ServingDep, caller: CallerDep, ref: RefDep
) -> ChatCompletion | StreamingResponse:
    """OpenAI chat completions; `stream: true` answers with server-sent events ending in `data: [DONE]`."""
    return await serving.chat(_ref(body.model, ref), caller, body)


@openai.post("/v1/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, serving: ServingDep, caller: CallerDep, ref: RefDep
) -> Completion | StreamingResponse:
    """OpenAI text completions (one prompt)."""
    return await serving.complete(_ref(body.model, ref), caller, body)


@router.post("/v1/playground/generate", response_model=PlaygroundResult, responses=ERRORS, tags=["playground"])
async def playground_generate(
    body: PlaygroundGenerate, serving: ServingDep, caller: CallerDep, ref: RefDep
) -> PlaygroundResult:
    """Try a model with one prompt."""
    return await serving.playground(_ref(body.model_id, ref), caller, body)


@router.post("/export", response_model=ExportResult, responses=ERRORS, tags=["models"])
async def export(body: ExportRequest, serving: ServingDep, caller: CallerDep) -> ExportResult:
    """Merge a LoRA adapter into its base and write full weights + tokenizer (default: `<adapter>-merged`)."""
    return await serving.export(caller, body)


@router.get("/engine", tags=["meta"])
async def engine(serving: ServingDep) -> dict[str, object]:
    """Loaded base models and the adapters attached to each."""
    return {"engine": serving.engine.engine_name, "worker_alive": serving.engine.alive, "loaded": await serving.loaded()}


router.include_router(openai)
