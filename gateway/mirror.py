"""Mirroring trainer jobs onto finetunes: the gateway's side of a job it does not run.

Once a finetune is started, its status, progress, metrics and output mirror its trainer job's
(``JobPublic`` from ``gateway.trainers``): on a read of an active finetune (``refresh_if_stale``,
at most once per ``MIRROR_MAX_AGE``) and from the background refresher (``gateway.workers``). This
module also settles starts the gateway could not confirm and registers the model of a completed
job. The job's progress and metrics events (per-step loss, eval loss, learning rate) are copied
into the finetune's events as ``metrics`` events, after a per-job cursor (``copy_job_events``), and
every ended job is kept in the finetune's ``runs`` with its output_uri, so a re-run loses nothing. The user's commands (create, start, cancel...) are in ``gateway.finetunes``; they call in
here, never the other way round.
"""

from __future__ import annotations

import hmac
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection, RowMapping

from common.db import tx
from common.errors import Conflict, NotFound, TrainyardError
from common.schemas import (
    FINETUNE_ACTIVE,
    EventLevel,
    EventPublic,
    EventType,
    FinetuneStatus,
    JobPublic,
    JobStatus,
    TrainingRequest,
)
from gateway import db, models
from gateway.context import Gateway

log = logging.getLogger("trainyard.gateway.mirror")

FS = FinetuneStatus
EV = db.FinetuneEventType
MIRROR_MAX_AGE = timedelta(seconds=1)  # a read of an active finetune asks the service at most this often
READ_TIMEOUT = 2.0  # seconds a read waits for the service before answering from the database
EVENT_PAGE = 1000  # job events fetched per request
MAX_EVENT_PAGES = 20  # pages copied per refresh; the next refresh continues from the cursor
COPIED_JOB_EVENTS = (EventType.progress, EventType.metrics)


def refresh(gw: Gateway, finetune_id: str, *, timeout: float | None = None) -> None:
    """Mirror one active finetune's job. A job the service no longer knows fails the finetune
    (never stuck); a service that cannot be reached changes nothing.

    Raises: ServiceUnavailable and other TrainyardErrors from the service."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, None)
    if not FS(row["status"]).has_job:
        return
    try:
        job = gw.trainers.get_job(row["service"], row["job_id"], timeout=timeout)
    except NotFound:
        with tx(gw.engine) as conn:
            db.set_finetune_status(
                conn, finetune_id, FS.failed, level=EventLevel.error,
                message=f"the {row['service']} service no longer knows job {row['job_id']}",
                only_from=FINETUNE_ACTIVE, where=(db.finetunes.c.job_id == row["job_id"],),
                error={"code": "job_lost", "message": f"the {row['service']} service has no job {row['job_id']}"},
                finished_at=db.utcnow(), refreshed_at=db.utcnow(),
            )
        return
    copy_job_events(gw, finetune_id, row["service"], job.id, timeout=timeout)
    with tx(gw.engine) as conn:
        mirror(conn, finetune_id, job)
    if job.status == JobStatus.completed:
        try:
            models.register(gw, finetune_id)
        except TrainyardError as e:  # the refresher's next tick registers it
            log.warning("finetune %s: model not registered yet: %s", finetune_id, e.detail)


def refresh_if_stale(gw: Gateway, row: RowMapping) -> bool:
    """Before a read: mirror an active finetune whose last mirror is older than ``MIRROR_MAX_AGE``,
    waiting at most ``READ_TIMEOUT`` (a slow or absent service leaves the stored state, logged).
    Returns whether it asked the service (the caller reads the row again)."""
    refreshed = db.aware(row["refreshed_at"])
    if not FS(row["status"]).has_job or (refreshed is not None and db.utcnow() - refreshed <= MIRROR_MAX_AGE):
        return False
    try:
        refresh(gw, row["id"], timeout=READ_TIMEOUT)
    except TrainyardError as e:
        log.info("finetune %s: showing stored state, its job could not be read (%s)", row["id"], e.error)
    return True


def copy_job_events(gw: Gateway, finetune_id: str, service: str, job_id: str, *, timeout: float | None = None) -> None:
    """Copy the job's progress and metrics events after the finetune's cursor into its events. The
    cursor moves conditionally in the same transaction, so two replicas never copy an event twice.

    Raises: ServiceUnavailable and other TrainyardErrors from the service."""
    for _ in range(MAX_EVENT_PAGES):
        with tx(gw.engine) as conn:
            row = db.get_finetune(conn, finetune_id, None)
        if row["job_id"] != job_id:
            return
        after = row["job_events_after"] or 0
        page = gw.trainers.events(service, job_id, after, limit=EVENT_PAGE, timeout=timeout).data
        if not page:
            return
        with tx(gw.engine) as conn:
            moved = db.update_finetune(
                conn, finetune_id, db.finetunes.c.job_id == job_id,
                (db.finetunes.c.job_events_after == after) if after else db.finetunes.c.job_events_after.is_(None),
                job_events_after=page[-1].id,
            )
            if not moved:  # another replica copied this page
                return
            for ev in page:
                if ev.type in COPIED_JOB_EVENTS:
                    db.add_event(conn, finetune_id, EV.metrics, ev.message or ev.type.value, level=ev.level,
                                 data=_metrics_data(job_id, ev))
        if len(page) < EVENT_PAGE:
            return


def _metrics_data(job_id: str, ev: EventPublic) -> dict[str, Any]:
    """One flat record: ``step, loss, eval_loss, learning_rate, epoch...`` (progress) or the final
    metrics (``final: true``), with the job and the time the job reported it."""
    values = ev.data.get("progress") or {} if ev.type == EventType.progress else ev.data.get("metrics") or {}
    return {"job_id": job_id, "reported_at": ev.created_at.isoformat(), **values,
            **({"final": True} if ev.type == EventType.metrics else {})}


def mirror(conn: Connection, finetune_id: str, job: JobPublic) -> None:
    """Copy a job's state onto its finetune; a status change goes through the transition table. An
    ended job is added to the finetune's ``runs`` (its output_uri is also in the status event)."""
    values = _job_values(job)
    to = FS(job.status.value)  # every job status is a finetune status
    same_job = db.finetunes.c.job_id == job.id
    data: dict[str, Any] = {"job_id": job.id}
    if to.terminal:
        data["output_uri"] = job.output_uri
        values["runs"] = _with_run(db.get_finetune(conn, finetune_id, None)["runs"], job)
    moved = to != FS.pending and db.set_finetune_status(
        conn, finetune_id, to, message=f"job {job.id} {to.value}", data=data,
        level=EventLevel.error if to == FS.failed else EventLevel.info,
        only_from=FINETUNE_ACTIVE, where=(same_job,), **values,
    )
    if not moved:
        db.update_finetune(conn, finetune_id, same_job, db.finetunes.c.status.in_([s.value for s in FINETUNE_ACTIVE]),
                           **values)


def _with_run(runs: list[dict[str, Any]] | None, job: JobPublic) -> list[dict[str, Any]]:
    run = {"job_id": job.id, "status": job.status.value, "output_uri": job.output_uri, "log_uri": job.log_uri,
           "started_at": job.started_at.isoformat() if job.started_at else None,
           "finished_at": job.finished_at.isoformat() if job.finished_at else None}
    return [*(r for r in runs or [] if r["job_id"] != job.id), run]


def _job_values(job: JobPublic) -> dict[str, Any]:
    return {
        "progress": job.progress.model_dump(mode="json"),
        "metrics": job.metrics.model_dump(mode="json"),
        "error": job.error.model_dump(mode="json") if job.error else None,
        "output_uri": job.output_uri,
        "log_uri": job.log_uri,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "refreshed_at": db.utcnow(),
    }


# --------------------------------------------------------------------------- starts


def record_started(gw: Gateway, finetune_id: str, job_id: str, job: JobPublic) -> None:
    """The service accepted the job: the finetune becomes ``pending`` and mirrors it from now on."""
    with tx(gw.engine) as conn:
        db.set_finetune_status(
            conn, finetune_id, FS.pending, message=f"job {job_id} accepted by the trainer service",
            data={"job_id": job_id}, only_from=frozenset({FS.validation_successful}),
            where=(db.finetunes.c.job_id == job_id,), start_claimed_at=None, **_job_values(job),
        )
        mirror(conn, finetune_id, job)  # the job may already be past pending


def release_start(gw: Gateway, finetune_id: str, job_id: str) -> None:
    """Undo a start claim whose job was never created: no trace but the event log."""
    with tx(gw.engine) as conn:
        released = db.update_finetune(
            conn, finetune_id, db.finetunes.c.job_id == job_id, db.finetunes.c.start_claimed_at.is_not(None),
            start_claimed_at=None, job_id=None, override_model=None, attempts=db.finetunes.c.attempts - 1,
        )
        if released:
            db.add_event(conn, finetune_id, EV.start, f"start of job {job_id} failed; nothing was started",
                         level=EventLevel.warning)


def adoptable(job: JobPublic, row: RowMapping, sent: TrainingRequest) -> JobPublic:
    """The existing job with our id, if it is the one this gateway sent: same finetune, workspace and
    project in its labels and the same request digest (secrets included). Anything else is a job
    someone else created under that id, and using it would hand them this finetune.

    Raises: Conflict (not ours)."""
    ours = (
        _labelled_for(job, row)
        and job.request_digest is not None
        and hmac.compare_digest(job.request_digest, sent.digest())
    )
    if not ours:
        log.warning("finetune %s: the %s service already holds a job %s that this gateway did not submit; "
                    "not adopting it", row["id"], row["service"], job.id)
        raise Conflict(f"the trainer service already has a different job with id '{job.id}'; "
                       f"start finetune '{row['id']}' again")
    return job


def _labelled_for(job: JobPublic, row: RowMapping) -> bool:
    labels = job.labels
    return bool(
        labels.get("workspace") == row["workspace_id"] and labels.get("project") == row["project_id"]
        and labels.get("finetune") == row["id"]
    )


def settle_start_claims(gw: Gateway, older_than: timedelta) -> None:
    """Starts the gateway could not confirm (it died, or the service timed out): ask the service."""
    with tx(gw.engine) as conn:
        rows = db.stale_start_claims(conn, db.utcnow() - older_than)
    for row in rows:
        try:
            job = gw.trainers.get_job(row["service"], row["job_id"], timeout=READ_TIMEOUT)
        except NotFound:
            release_start(gw, row["id"], row["job_id"])
            log.info("finetune %s: start of %s never reached the service; released", row["id"], row["job_id"])
            continue
        except TrainyardError as e:
            log.info("finetune %s: cannot settle its start yet (%s)", row["id"], e.error)
            continue
        if not _labelled_for(job, row):  # the id is unguessable, but never adopt another's job
            release_start(gw, row["id"], row["job_id"])
            log.warning("finetune %s: job %s on the service is not this finetune's; released", row["id"], row["job_id"])
            continue
        record_started(gw, row["id"], row["job_id"], job)
