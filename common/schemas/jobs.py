"""The job contract of the trainer services: status and its transition table, progress, metrics,
events, logs, the reports a running job sends, and the public job record."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.schemas.base import MAX_REPORT_ITEMS, MAX_REPORT_MESSAGE_CHARS, Strict


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})

# The one transition table: status changes anywhere go through common.jobs.transition().
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.pending: frozenset({JobStatus.running, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.running: frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.completed: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


class Progress(BaseModel):
    epoch: float | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    percent: float = 0.0
    eval_loss: float | None = None
    tokens_seen: int | None = None


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_loss_before: float | None = None
    tokens_seen: int | None = None
    runtime_seconds: float | None = None
    tokens_per_second: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    backend: str
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    metrics: Metrics = Field(default_factory=Metrics)
    error: JobError | None = None
    output_uri: str | None = None
    log_uri: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    runner: str | None = Field(None, description="local | kubernetes")
    runner_ref: str | None = Field(None, description="host:pid (local) or the Kubernetes Job name.")
    request: dict[str, Any] = Field(default_factory=dict, description="The request, secrets removed.")
    request_digest: str | None = Field(
        None, description="SHA-256 of the request as submitted, secrets included (TrainingRequest.digest)."
    )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class EventLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class EventType(StrEnum):
    status = "status"
    progress = "progress"
    metrics = "metrics"
    log = "log"
    checkpoint = "checkpoint"


class EventPublic(BaseModel):
    id: int
    job_id: str
    created_at: datetime
    level: EventLevel
    type: EventType
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


class LogsPublic(BaseModel):
    job_id: str
    logs: list[str]
    count: int


class ProgressReport(Strict):
    """What the training program POSTs to the service's internal endpoint."""

    type: Literal["progress", "metrics", "log", "checkpoint", "started"]
    level: EventLevel = EventLevel.info
    message: str = Field("", max_length=MAX_REPORT_MESSAGE_CHARS)
    progress: Progress | None = None
    metrics: dict[str, Any] | None = Field(None, max_length=MAX_REPORT_ITEMS)
    data: dict[str, Any] = Field(default_factory=dict, max_length=MAX_REPORT_ITEMS)


class BackendInfo(BaseModel):
    backend: str
    methods: list[str]
    training_types: list[str]
    version: str
    available: bool
    unavailable_reason: str | None = None
    runner: str
    status: Literal["ready", "starting", "unavailable"] = Field(
        "ready", description="'starting' while the backend's start-up check runs (then available is false "
        "and unavailable_reason null until it is done)."
    )

