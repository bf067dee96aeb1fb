"""/v1/finetune (and, with the internal Auth, /v1/dataservice/finetune): thin routes over gateway.finetunes."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from common.schemas import (
    MAX_QUERY_INT,
    ArtifactsPublic,
    Envelope,
    ErrorBody,
    FinetuneCreate,
    FinetuneCreated,
    FinetuneEventPublic,
    FinetunePublic,
    FinetuneStart,
    FinetuneStatus,
    FinetuneUpdate,
    ListEnvelope,
    LogsPublic,
)
from gateway import artifacts, finetunes
from gateway.auth import Principal
from gateway.deps import Auth, GatewayDep, Limit, Offset, idempotent

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 502, 503)}


def build_router(auth: Auth, tag: str = "finetune") -> APIRouter:
    Reader = Annotated[Principal, Depends(auth.read)]
    Writer = Annotated[Principal, Depends(auth.write)]
    router = APIRouter(prefix="/finetune", tags=[tag], responses=ERRORS)
    Idempotent = idempotent(auth)

    @router.post("", dependencies=[Idempotent], response_model=Envelope[FinetuneCreated])
    def create_finetune(body: FinetuneCreate, who: Writer, gw: GatewayDep) -> Envelope[FinetuneCreated]:
        """Create a finetune (status `created`); `provider` picks the trainer service."""
        return Envelope(data=finetunes.create(gw, who, body))

    @router.get("", response_model=ListEnvelope[FinetunePublic])
    def list_finetunes(
        who: Reader, gw: GatewayDep, status: FinetuneStatus | None = None, limit: Limit = 100, offset: Offset = 0
    ) -> ListEnvelope[FinetunePublic]:
        data, count = finetunes.list_(gw, who, status=status, limit=limit, offset=offset)
        return ListEnvelope(data=data, count=count)

    @router.get("/{finetune_id}", response_model=Envelope[FinetunePublic])
    def get_finetune(finetune_id: str, who: Reader, gw: GatewayDep) -> Envelope[FinetunePublic]:
        """Status, validation result, progress, metrics and output location."""
        return Envelope(data=finetunes.get(gw, who, finetune_id))

    @router.put("/{finetune_id}", response_model=Envelope[FinetunePublic])
    def update_finetune(finetune_id: str, body: FinetuneUpdate, who: Writer, gw: GatewayDep) -> Envelope[FinetunePublic]:
        """Attach datasets; resets the finetune to `created` (409 while its job is pending or running)."""
        return Envelope(data=finetunes.update(gw, who, finetune_id, body))

    @router.post("/{finetune_id}/validation/start", dependencies=[Idempotent], response_model=Envelope[FinetunePublic])
    def start_validation(finetune_id: str, who: Writer, gw: GatewayDep) -> Envelope[FinetunePublic]:
        """Validate the datasets in the background; poll GET until pk_dataset_validation_successfull or _failed."""
        return Envelope(data=finetunes.start_validation(gw, who, finetune_id))

    @router.post("/{finetune_id}/start", dependencies=[Idempotent], response_model=Envelope[FinetunePublic])
    def start_finetune(
        finetune_id: str, who: Writer, gw: GatewayDep, body: Annotated[FinetuneStart | None, Body()] = None
    ) -> Envelope[FinetunePublic]:
        """Submit the training job (409 unless validation succeeded; 503 if the service is down)."""
        return Envelope(data=finetunes.start(gw, who, finetune_id, body or FinetuneStart()))

    @router.post("/{finetune_id}/cancel", dependencies=[Idempotent], response_model=Envelope[FinetunePublic])
    def cancel_finetune(finetune_id: str, who: Writer, gw: GatewayDep) -> Envelope[FinetunePublic]:
        return Envelope(data=finetunes.cancel(gw, who, finetune_id))

    @router.get("/{finetune_id}/events", response_model=ListEnvelope[FinetuneEventPublic])
    def finetune_events(
        finetune_id: str, who: Reader, gw: GatewayDep,
        after: Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="Only events with id > after.")] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> ListEnvelope[FinetuneEventPublic]:
        """The finetune's status changes (validation, start, the job's states) and its job's training
        metrics (type `metrics`: step, loss, eval_loss, learning_rate per logged step; `final` at the end)."""
        data = finetunes.events(gw, who, finetune_id, after_id=after, limit=limit)
        return ListEnvelope(data=data, count=len(data))

    @router.get("/{finetune_id}/artifacts", response_model=Envelope[ArtifactsPublic])
    def finetune_artifacts(finetune_id: str, request: Request, who: Reader, gw: GatewayDep) -> Envelope[ArtifactsPublic]:
        """Each run's output files (adapter, tokenizer, checkpoints) with signed, short-lived download URLs."""
        return Envelope(data=artifacts.list_(gw, who, finetune_id, str(request.base_url)))

    @router.get("/{finetune_id}/logs", response_model=Envelope[LogsPublic])
    def finetune_logs(
        finetune_id: str, who: Reader, gw: GatewayDep, tail: Annotated[int, Query(ge=0, le=100_000)] = 100
    ) -> Envelope[LogsPublic]:
        """The training job's last `tail` log lines (0: all), from the trainer service."""
        return Envelope(data=finetunes.logs(gw, who, finetune_id, tail))

    return router
