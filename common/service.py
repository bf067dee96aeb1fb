"""The one FastAPI app factory every trainer service uses.

A service is ``create_service_app(SomeBackend())``: routes, persistence, storage and
the runner are identical across backends; only ``BaseTrainerBackend`` differs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from sqlalchemy import Engine

from common import db, jobs
from common.bodylimit import install_body_limit
from common.errors import Unauthorized, install_handlers
from common.outbound import OutboundPolicy
from common.runners import make_runner
from common.runners.base import JobRunner, RunnerDeps
from common.schemas import (
    MAX_QUERY_INT,
    BackendInfo,
    ErrorBody,
    EventsPublic,
    Health,
    JobPublic,
    JobsPublic,
    JobStatus,
    LogsPublic,
    ProgressReport,
    TrainingRequest,
)
from common.settings import Settings, get_settings
from common.storage import ObjectStore
from common.trainer import BaseTrainerBackend
from common.version import VERSION

log = logging.getLogger("trainyard.service")


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _runner(request: Request) -> JobRunner:
    return request.app.state.runner


def _backend(request: Request) -> BaseTrainerBackend:
    return request.app.state.backend


def _store(request: Request) -> ObjectStore:
    return request.app.state.store


def _outbound(request: Request) -> OutboundPolicy:
    return request.app.state.outbound


EngineDep = Annotated[Engine, Depends(_engine)]
RunnerDep = Annotated[JobRunner, Depends(_runner)]
BackendDep = Annotated[BaseTrainerBackend, Depends(_backend)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
OutboundDep = Annotated[OutboundPolicy, Depends(_outbound)]

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 422, 503)}
router = APIRouter(responses=ERRORS)


@router.post("/train", status_code=202, response_model=JobPublic, tags=["jobs"])
def train(
    body: TrainingRequest, engine: EngineDep, store: StoreDep, runner: RunnerDep, backend: BackendDep,
    outbound: OutboundDep,
) -> JobPublic:
    """Accept a training request; the job starts when a runner slot is free."""
    return jobs.submit(engine, store, runner, backend, body, outbound)


@router.get("/jobs", response_model=JobsPublic, tags=["jobs"])
def list_jobs(
    engine: EngineDep,
    backend: BackendDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_QUERY_INT)] = 0,
) -> JobsPublic:
    return jobs.list_jobs(engine, backend.name, status=status, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, tags=["jobs"])
def get_job(job_id: str, engine: EngineDep) -> JobPublic:
    return jobs.get(engine, job_id)


@router.get("/jobs/{job_id}/logs", response_model=LogsPublic, tags=["jobs"])
def get_logs(
    job_id: str, engine: EngineDep, runner: RunnerDep, tail: Annotated[int, Query(ge=0, le=100_000)] = 100
) -> LogsPublic:
    """The last ``tail`` lines of the job's log; ``tail=0`` returns all of it."""
    return jobs.logs(engine, runner, job_id, tail)


@router.get("/jobs/{job_id}/events", response_model=EventsPublic, tags=["jobs"])
def get_events(
    job_id: str,
    engine: EngineDep,
    after: Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="Only events with id > after (for polling).")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> EventsPublic:
    return jobs.events(engine, job_id, after_id=after, limit=limit)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, tags=["jobs"])
def cancel_job(job_id: str, engine: EngineDep, runner: RunnerDep, outbound: OutboundDep) -> JobPublic:
    return jobs.cancel(engine, runner, job_id, outbound)


@router.post("/internal/jobs/{job_id}/reports", status_code=204, tags=["internal"])
def job_report(
    job_id: str, body: ProgressReport, engine: EngineDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Progress from the training program, authenticated by the job's own token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    jobs.report(engine, job_id, token, body)
    return Response(status_code=204)


@router.get("/health", response_model=Health, tags=["meta"])
def health() -> Health:
    return Health(version=VERSION)


@router.get("/info", response_model=BackendInfo, tags=["meta"])
def info(backend: BackendDep, runner: RunnerDep) -> BackendInfo:
    reason = backend.unavailable_reason(runner.name)
    return BackendInfo(
        backend=backend.name,
        methods=[m.value for m in backend.methods],
        training_types=[backend.training_type],
        version=VERSION,
        available=reason is None,
        unavailable_reason=reason,
        runner=runner.name,
    )


def create_service_app(backend: BaseTrainerBackend, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.make_engine(settings.database_url)
        db.init_db(engine)
        store = ObjectStore(settings)
        outbound = OutboundPolicy.from_settings(settings)
        runner = make_runner(
            RunnerDeps(engine, settings, store, backend.name,
                       on_status=lambda jid: jobs.notify_webhook(engine, jid, outbound))
        )
        app.state.engine, app.state.store, app.state.runner, app.state.backend = engine, store, runner, backend
        app.state.outbound = outbound
        runner.start()
        backend.start(runner.name)
        log.info("%s service ready (runner=%s)", backend.name, runner.name)
        try:
            yield
        finally:
            backend.stop()
            runner.stop()
            engine.dispose()

    app = FastAPI(
        title=f"Trainyard {backend.name} trainer",
        version=VERSION,
        description=f"Trainer service for the {backend.name} backend: the shared `POST /train` contract.",
        lifespan=lifespan,
    )
    install_handlers(app)
    install_body_limit(app, settings.max_request_bytes)
    app.include_router(router)
    return app
