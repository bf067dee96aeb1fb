"""The one FastAPI app factory every trainer service uses.

A service is ``create_service_app(SomeBackend())``: routes, persistence, storage and
the runner are identical across backends; only ``BaseTrainerBackend`` differs.

Two listeners, two audiences (docs/security.md):

    main port     every route but /health takes the service token (the gateway's credential)
    report port   POST /internal/jobs/{id}/reports with the job's own token, and /health:
                  the only port training jobs may reach (settings.report_port)
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from sqlalchemy import Engine

from common import db, idempotency, jobs, logredact, secretbox
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
from common.service_auth import check_service_token, require_service_token, service_token_bytes
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


def _caller(backend: BackendDep) -> str:
    """Idempotency keys are the service credential's: one scope per service (several may share a database)."""
    return f"service:{backend.name}"


Idempotent = Depends(idempotency.idempotent(_caller))

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 422, 503)}
router = APIRouter(responses=ERRORS, dependencies=[Depends(require_service_token)])
meta_router = APIRouter()  # /health: probes carry no credential
report_router = APIRouter(responses={code: {"model": ErrorBody} for code in (401, 404, 422)})


@router.post("/train", status_code=202, response_model=JobPublic, tags=["jobs"], dependencies=[Idempotent])
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


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, tags=["jobs"], dependencies=[Idempotent])
def cancel_job(job_id: str, engine: EngineDep, runner: RunnerDep, outbound: OutboundDep) -> JobPublic:
    return jobs.cancel(engine, runner, job_id, outbound)


@report_router.post("/internal/jobs/{job_id}/reports", status_code=204, tags=["internal"])
def job_report(
    job_id: str, body: ProgressReport, engine: EngineDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Progress from the training program, authenticated by the job's own token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    jobs.report(engine, job_id, token, body)
    return Response(status_code=204)


@meta_router.get("/health", response_model=Health, tags=["meta"])
def health(request: Request) -> Health:
    """"healthy", or "starting" while the backend's start-up check runs (requests are answered meanwhile)."""
    backend: BaseTrainerBackend | None = getattr(request.app.state, "backend", None)
    runner: JobRunner | None = getattr(request.app.state, "runner", None)
    busy = backend is not None and runner is not None and backend.starting(runner.name)
    return Health(status="starting" if busy else "healthy", version=VERSION)


@router.get("/info", response_model=BackendInfo, tags=["meta"])
def info(backend: BackendDep, runner: RunnerDep) -> BackendInfo:
    """Never waits for a start-up check: while one runs, the answer is "starting"."""
    starting = backend.starting(runner.name)
    reason = None if starting else backend.unavailable_reason(runner.name)
    return BackendInfo(
        backend=backend.name,
        methods=[m.value for m in backend.methods],
        training_types=[backend.training_type],
        version=VERSION,
        available=not starting and reason is None,
        unavailable_reason=reason,
        runner=runner.name,
        status="starting" if starting else "ready" if reason is None else "unavailable",
    )


def create_report_app(name: str = "", settings: Settings | None = None) -> FastAPI:
    """The job-facing app: progress reports (per-job token) and /health, nothing else.

    The service's lifespan serves it on the report port with ``state.engine`` set."""
    app = FastAPI(
        title=f"Trainyard {name + ' ' if name else ''}trainer: job reports",
        version=VERSION,
        description="The only routes training jobs may call, on a port of their own; each report carries the "
        "job's own token.",
    )
    install_handlers(app)
    install_body_limit(app, (settings or get_settings()).max_request_bytes)
    app.include_router(report_router)
    app.include_router(meta_router)
    return app


class ReportListener:
    """The report app on its own socket, served by a uvicorn server in a thread the lifespan owns.

    The socket is bound in ``__init__`` so ``port`` is known (port 0 picks a free one) before the
    runner hands jobs their report URL."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="info"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="report-listener", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def create_service_app(backend: BaseTrainerBackend, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    report_app = create_report_app(backend.name, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_service_token(settings, f"the {backend.name} trainer service")
        box = secretbox.from_settings(settings)
        logredact.install()
        app.state.service_token = service_token_bytes(settings)
        engine = db.make_engine(settings.database_url)
        db.init_db(engine)
        store = ObjectStore(settings)
        store.check_location()
        outbound = OutboundPolicy.from_settings(settings)
        report_app.state.engine = engine
        listener = ReportListener(report_app, settings.report_host, settings.report_port)
        runner = make_runner(
            RunnerDeps(engine, settings, store, backend.name,
                       on_status=lambda jid: jobs.notify_webhook(engine, box, jid, outbound),
                       progress_base=settings.progress_base(listener.port), box=box)
        )
        app.state.engine, app.state.store, app.state.runner, app.state.backend = engine, store, runner, backend
        app.state.outbound = outbound
        app.state.idempotency = idempotency.IdempotencyStore(engine, settings.idempotency_ttl_seconds)
        listener.start()
        runner.start()
        backend.start(runner.name)
        log.info("%s service ready (runner=%s, job reports on port %d)", backend.name, runner.name, listener.port)
        try:
            yield
        finally:
            backend.stop()
            runner.stop()
            listener.stop()
            engine.dispose()

    app = FastAPI(
        title=f"Trainyard {backend.name} trainer",
        version=VERSION,
        description=f"Trainer service for the {backend.name} backend: the shared `POST /train` contract.",
        lifespan=lifespan,
    )
    install_handlers(app)
    install_body_limit(app, settings.max_request_bytes)
    idempotency.install(app)
    app.include_router(router)
    app.include_router(meta_router)
    app.state.report_app = report_app
    return app
