"""Job operations behind the trainer-service routes: submit, read, cancel, report.

Routes stay thin; every rule about jobs lives here or in the transition table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from typing import Any

import httpx
from sqlalchemy import Engine

from common import db, modelrefs
from common.errors import BadRequest, Conflict, NotFound, StorageError, Unauthorized, Unprocessable
from common.outbound import OutboundPolicy, URLRefused
from common.runners.base import JobRunner
from common.schemas import (
    EventLevel,
    EventsPublic,
    EventType,
    JobPublic,
    JobsPublic,
    JobStatus,
    LogsPublic,
    ProgressReport,
    TrainingRequest,
)
from common.secretbox import SecretBox, SecretsUnreadable
from common.storage import ObjectStore
from common.trainer import BaseTrainerBackend, class_path

log = logging.getLogger("trainyard.jobs")


def submit(
    engine: Engine, store: ObjectStore, runner: JobRunner, backend: BaseTrainerBackend, request: TrainingRequest,
    outbound: OutboundPolicy,
) -> JobPublic:
    """Check what the request names, validate for the backend, persist the job and its spec, wake the runner.

    Raises: Unprocessable (a refused model, URI or URL; backend constraints), BackendUnavailable,
    Conflict (duplicate id), StorageError (spec could not be written: nothing is persisted then).
    """
    check_references(store, outbound, request)
    backend.validate(request, runner=runner.name, store=store)
    _check_datasets_exist(store, request)
    job_id = request.ensure_id()
    digest = request.digest()
    with db.tx(engine) as conn:  # fail fast on a duplicate before writing anything
        try:
            db.get_job_row(conn, job_id)
            raise Conflict(f"a job with id '{job_id}' already exists")
        except NotFound:
            pass
    output_uri = request.artifacts.output_uri or store.default_uri("results", job_id)
    log_uri = request.artifacts.log_uri or store.default_uri("logs", job_id)
    spec_uri = store.default_uri("jobs", job_id, "spec.json")
    public = request.public_request()
    spec = {"job_id": job_id, "backend": backend.name, "backend_class": class_path(backend), "request": public,
            "output_uri": output_uri, "log_uri": log_uri}
    store.put_bytes(spec_uri, json.dumps(spec, indent=2).encode(), content_type="application/json")
    with db.tx(engine) as conn:
        db.insert_job(
            conn,
            {
                "id": job_id,
                "backend": backend.name,
                "request": public,
                "secrets": runner.box.seal(request.secrets()),
                "request_digest": digest,
                "labels": request.labels,
                "output_uri": output_uri,
                "log_uri": log_uri,
                "spec_uri": spec_uri,
                "runner": runner.name,
                "progress": {},
                "metrics": {},
            },
        )
        db.add_event(conn, job_id, EventType.status, "job accepted", data={"status": JobStatus.pending.value})
    runner.wake()
    return get(engine, job_id)


def check_references(store: ObjectStore, outbound: OutboundPolicy, request: TrainingRequest) -> None:
    """Everything the request names, checked before anything runs: the model (common.modelrefs),
    storage URIs confined like every read and write (ObjectStore.check) and request URLs
    (common.outbound). All problems in one 422, each naming its field.

    Raises: Unprocessable."""
    problems: list[str] = []
    bm = request.base_model
    for field, ref in (("base_model.model_name", bm.model_name), ("base_model.weights_url", bm.weights_url)):
        if ref is not None:
            try:
                modelrefs.check_resolved(ref, store.settings, store, field=field)
            except modelrefs.ModelRefused as e:
                problems.append(str(e.detail))
    uris: list[tuple[str, str | None]] = [(f"datasets[{i}].source", ds.source) for i, ds in enumerate(request.datasets)]
    uris += [("artifacts.output_uri", request.artifacts.output_uri), ("artifacts.log_uri", request.artifacts.log_uri)]
    for field, uri in uris:
        if uri is not None:
            try:
                store.check(uri)
            except BadRequest as e:
                problems.append(f"{field}: {e.detail}")
    urls = [("callbacks.webhook_url", request.callbacks.webhook_url),
            ("artifacts.status_stream_url", request.artifacts.status_stream_url)]
    for field, url in urls:
        if url is not None:
            try:
                outbound.check(url, field=field)
            except URLRefused as e:
                problems.append(str(e.detail))
    if problems:
        raise Unprocessable(problems)


def _check_datasets_exist(store: ObjectStore, request: TrainingRequest) -> None:
    """Refuse at once a dataset we can see is missing; one we may not read (its own
    credentials) is left for the job to fetch."""
    missing = []
    for i, ds in enumerate(request.datasets):
        try:
            if not store.exists(ds.source):
                missing.append(f"datasets[{i}].source: no object at {ds.source}")
        except StorageError as e:
            log.info("cannot check %s from the service (%s); the job will", ds.source, e.error)
    if missing:
        raise Unprocessable(missing)


def get(engine: Engine, job_id: str) -> JobPublic:
    with db.tx(engine) as conn:
        return db.job_public(db.get_job_row(conn, job_id))


def list_jobs(engine: Engine, backend: str, *, status: JobStatus | None, limit: int, offset: int) -> JobsPublic:
    with db.tx(engine) as conn:
        rows, count = db.list_job_rows(conn, backend=backend, status=status, limit=limit, offset=offset)
    return JobsPublic(data=[db.job_public(r) for r in rows], count=count)


def cancel(engine: Engine, runner: JobRunner, job_id: str, outbound: OutboundPolicy) -> JobPublic:
    """Raises: NotFound; Conflict when the job already ended."""
    with db.tx(engine) as conn:
        row = db.get_job_row(conn, job_id)
        if JobStatus(row["status"]).terminal:
            raise Conflict(f"job '{job_id}' already {row['status']}; only pending or running jobs can be cancelled")
        moved = db.set_status(
            conn, job_id, JobStatus.cancelled, message="cancelled by request", level=EventLevel.warning,
            cancel_requested=True,
        )
    if not moved:  # it ended while we looked
        raise Conflict(f"job '{job_id}' already ended")
    runner.cancel(job_id)
    notify_webhook(engine, runner.box, job_id, outbound)
    return get(engine, job_id)


def logs(engine: Engine, runner: JobRunner, job_id: str, tail: int) -> LogsPublic:
    get(engine, job_id)
    lines = runner.logs(job_id, tail=tail)
    return LogsPublic(job_id=job_id, logs=lines, count=len(lines))


def events(engine: Engine, job_id: str, *, after_id: int, limit: int) -> EventsPublic:
    with db.tx(engine) as conn:
        db.get_job_row(conn, job_id)
        evs = db.list_events(conn, job_id, after_id=after_id, limit=limit)
    return EventsPublic(data=evs, count=len(evs))


def report(engine: Engine, job_id: str, token: str, rep: ProgressReport) -> None:
    """A training program's report. Progress never moves backwards and is ignored once
    the job ended (a late report must not resurrect a cancelled job).

    Raises: NotFound, Unauthorized (bad per-job token)."""
    with db.tx(engine) as conn:
        row = db.get_job_row(conn, job_id)
        expected = row["progress_token_hash"] or ""
        if not expected or not hmac.compare_digest(expected, hashlib.sha256(token.encode()).hexdigest()):
            raise Unauthorized("invalid progress token for this job")
        if row["status"] != JobStatus.running.value:
            return
        values: dict[str, Any] = {}
        data = dict(rep.data)
        if rep.progress is not None:
            old = row["progress"] or {}
            new = rep.progress.model_dump(exclude_none=True)
            if new.get("step", 0) >= old.get("step", 0):
                values["progress"] = {**old, **new}
            data["progress"] = new
        if rep.metrics:
            values["metrics"] = {**(row["metrics"] or {}), **rep.metrics}
            data["metrics"] = rep.metrics
        if values:
            db.update_job(conn, job_id, **values)
        type_ = EventType.status if rep.type == "started" else EventType(rep.type)
        db.add_event(conn, job_id, type_, rep.message or rep.type, level=rep.level, data=data)


def notify_webhook(engine: Engine, box: SecretBox, job_id: str, outbound: OutboundPolicy) -> None:
    """POST the job to callbacks.webhook_url in the background (bounded, never raises); the URL
    passes the outbound policy again at send time."""
    with db.tx(engine) as conn:
        row = db.get_job_row(conn, job_id)
    url = ((row["request"] or {}).get("callbacks") or {}).get("webhook_url")
    if not url:
        return
    headers = {}
    try:
        auth = box.open(row["secrets"]).get("webhook_auth_header")
    except SecretsUnreadable:
        log.warning("webhook for job %s not sent: its stored secrets cannot be decrypted", job_id)
        return
    if auth:
        headers["Authorization"] = auth
    body = db.job_public(row).model_dump(mode="json", exclude={"request"})

    def send() -> None:
        try:
            outbound.post_json(url, field="callbacks.webhook_url", body=body, headers=headers)
        except URLRefused as e:
            log.warning("webhook for job %s not sent: %s", job_id, e.detail)
        except httpx.HTTPError as e:
            log.warning("webhook for job %s failed: %s", job_id, type(e).__name__)

    threading.Thread(target=send, name=f"webhook-{job_id}", daemon=True).start()
