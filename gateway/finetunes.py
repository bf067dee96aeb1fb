"""Finetune operations behind /v1/finetune and /v1/dataservice/finetune.

A finetune is a base model, hyperparameters and datasets; it moves through

    created -> pk_dataset_validation_in_progress -> pk_dataset_validation_successfull | _failed
            -> (start) pending -> running -> completed | failed | cancelled

with every move checked against ``FINETUNE_TRANSITIONS`` and recorded as an event
(``gateway.db.set_finetune_status``). Once started, its status, progress and metrics mirror the
trainer job's: on every read of an active finetune (at most once a second) and from the
background refresher (``gateway.workers``). Starting is two-phase so a dead service never leaves a
half-started finetune: the start is claimed in the database (job id chosen), ``POST /train`` is
called, and only a job the service accepted moves the finetune to ``pending``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Connection, RowMapping

from common.db import tx
from common.errors import Conflict, NotFound, TrainyardError, Unprocessable
from common.schemas import (
    FINETUNE_ACTIVE,
    EventLevel,
    FinetuneCreate,
    FinetuneCreated,
    FinetuneEventPublic,
    FinetuneHyperparameters,
    FinetunePublic,
    FinetuneStart,
    FinetuneStatus,
    FinetuneUpdate,
    Resources,
    TrainingRequest,
    service_for,
)
from gateway import datasets, db, modelrefs, models
from gateway.auth import Principal
from gateway.context import Gateway
from gateway.trainers import ServiceNoAnswer

log = logging.getLogger("trainyard.gateway.finetunes")

FS = FinetuneStatus
EV = db.FinetuneEventType
MIRROR_MAX_AGE = timedelta(seconds=1)  # a read of an active finetune asks the service at most this often
READ_TIMEOUT = 2.0  # seconds a read waits for the service before answering from the database
JOB_ID_RANDOM_BYTES = 8  # 64 random bits in every job id the gateway chooses


def _training_request(
    gw: Gateway, row: dict[str, Any], *, job_id: str, model: str, train_uri: str, validation_uri: str | None
) -> TrainingRequest:
    """Raises: Unprocessable when the hyperparameters do not make a valid training request."""
    hp = FinetuneHyperparameters.model_validate(row["hyperparameters"] or {})
    prefix = datasets.project_prefix(row["workspace_id"], row["project_id"])
    try:
        return hp.to_training_request(
            job_id=job_id,
            model=model,
            train_uri=train_uri,
            validation_uri=validation_uri,
            output_uri=gw.store.default_uri(prefix, "results", job_id),
            log_uri=gw.store.default_uri(prefix, "logs", job_id),
            labels={"workspace": row["workspace_id"], "project": row["project_id"], "finetune": row["id"]},
            resources=Resources.model_validate(row["resources"]) if row["resources"] else None,
            model_token=gw.box.open(row["secrets"]).get("virtual_key"),
        )
    except ValidationError as e:
        raise Unprocessable(
            [{"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()]
        ) from e


def _check_dataset(conn: Connection, dataset_id: str | None, workspace_id: str, expected: str) -> None:
    """Raises: Unprocessable (no such dataset in this workspace, or the wrong type)."""
    if dataset_id is None:
        return
    try:
        row = db.get_dataset(conn, dataset_id, workspace_id)
    except NotFound as e:
        raise Unprocessable(f"{expected}_dataset_id: dataset '{dataset_id}' not found") from e
    if row["type"] != expected:
        raise Unprocessable(f"{expected}_dataset_id: dataset '{dataset_id}' has type '{row['type']}', not '{expected}'")


# --------------------------------------------------------------------------- create / read


def create(gw: Gateway, who: Principal, body: FinetuneCreate) -> FinetuneCreated:
    """Raises: Unprocessable (hyperparameters that make no valid training request, bad dataset ids)."""
    finetune_id = f"ft-{uuid.uuid4().hex[:12]}"
    training_type = body.training_type()
    row = {
        "id": finetune_id,
        "workspace_id": who.workspace_id,
        "project_id": body.project_id,
        "name": body.name,
        "provider": body.provider.value,
        "service": service_for(body.provider, training_type),
        "training_type": training_type.value,
        "model": body.model,
        "hyperparameters": body.hyperparameters.model_dump(mode="json", exclude_none=True),
        "resources": body.resources.model_dump(mode="json") if body.resources else None,
        "secrets": gw.box.seal({"virtual_key": body.virtual_key.get_secret_value()} if body.virtual_key else {}),
        "training_dataset_id": body.training_dataset_id,
        "validation_dataset_id": body.validation_dataset_id,
    }
    with tx(gw.engine) as conn:
        model = modelrefs.resolve(conn, gw.settings, body.model, who.workspace_id)
    # Surface cross-field problems now, not at start: build the request once with stand-in files.
    _training_request(gw, row, job_id=f"{finetune_id}-0", model=model, train_uri="file:///check.jsonl",
                      validation_uri=None)
    with tx(gw.engine) as conn:
        _check_dataset(conn, body.training_dataset_id, who.workspace_id, "training")
        _check_dataset(conn, body.validation_dataset_id, who.workspace_id, "validation")
        db.insert_finetune(conn, row)
    return FinetuneCreated(id=finetune_id, status=FS.created)


def get(gw: Gateway, who: Principal, finetune_id: str) -> FinetunePublic:
    """The finetune; an active one first mirrors its job (answering from the database if the
    service is slow or down)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
    refreshed = db.aware(row["refreshed_at"])
    if FS(row["status"]).has_job and (refreshed is None or db.utcnow() - refreshed > MIRROR_MAX_AGE):
        try:
            refresh(gw, finetune_id, timeout=READ_TIMEOUT)
        except TrainyardError as e:
            log.info("finetune %s: showing stored state, its job could not be read (%s)", finetune_id, e.error)
        with tx(gw.engine) as conn:
            row = db.get_finetune(conn, finetune_id, who.workspace_id)
    return db.finetune_public(row)


def list_(
    gw: Gateway, who: Principal, *, status: FinetuneStatus | None, limit: int, offset: int
) -> tuple[list[FinetunePublic], int]:
    with tx(gw.engine) as conn:
        rows, count = db.list_finetunes(conn, who.workspace_id, status=status, limit=limit, offset=offset)
    return [db.finetune_public(r) for r in rows], count


def events(gw: Gateway, who: Principal, finetune_id: str, *, after_id: int, limit: int) -> list[FinetuneEventPublic]:
    with tx(gw.engine) as conn:
        db.get_finetune(conn, finetune_id, who.workspace_id)
        return db.list_events(conn, finetune_id, after_id=after_id, limit=limit)


def logs(gw: Gateway, who: Principal, finetune_id: str, tail: int) -> dict[str, Any]:
    """The trainer job's log lines. Raises: Conflict (not started), ServiceUnavailable."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
    if not (FS(row["status"]).has_job or FS(row["status"]).terminal) or not row["job_id"]:
        raise Conflict(f"finetune '{finetune_id}' has not started a job yet")
    return gw.trainers.logs(row["service"], row["job_id"], tail)


# --------------------------------------------------------------------------- attach / validate


def update(gw: Gateway, who: Principal, finetune_id: str, body: FinetuneUpdate) -> FinetunePublic:
    """Attach datasets and reset the finetune to ``created`` (the contract's PUT).

    Raises: NotFound, Unprocessable (bad dataset ids), Conflict (its job is pending or running)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
        status = FS(row["status"])
        if status.has_job:
            raise Conflict(f"finetune '{finetune_id}' is {status.value}; cancel it before attaching new datasets")
        _check_dataset(conn, body.training_dataset_id, who.workspace_id, "training")
        _check_dataset(conn, body.validation_dataset_id, who.workspace_id, "validation")
        values: dict[str, Any] = {
            "training_dataset_id": body.training_dataset_id, "validation_dataset_id": body.validation_dataset_id,
            "validation": None, "validation_run": None, "validation_claimed_by": None, "job_id": None,
            "start_claimed_at": None, "override_model": None, "progress": {}, "metrics": {}, "error": None,
            "output_uri": None, "log_uri": None, "started_at": None, "finished_at": None, "refreshed_at": None,
        }
        data = {"training_dataset_id": body.training_dataset_id, "validation_dataset_id": body.validation_dataset_id}
        if status == FS.created:
            ok = db.update_finetune(conn, finetune_id, db.finetunes.c.status == FS.created.value, **values)
            if ok:
                db.add_event(conn, finetune_id, EV.status, "datasets attached", data={"status": "created", **data})
        else:
            ok = db.set_finetune_status(conn, finetune_id, FS.created, message="datasets attached; status reset",
                                        data=data, only_from=frozenset({status}), **values)
        if not ok:
            raise Conflict(f"finetune '{finetune_id}' changed while updating it; try again")
        return db.finetune_public(db.get_finetune(conn, finetune_id, who.workspace_id))


def start_validation(gw: Gateway, who: Principal, finetune_id: str) -> FinetunePublic:
    """Queue the background validation of the finetune's datasets.

    Raises: NotFound, Conflict (no dataset or file attached, already validating, or started)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
        status = FS(row["status"])
        if status == FS.validation_in_progress:
            raise Conflict(f"finetune '{finetune_id}' is already being validated")
        if status.has_job or status.terminal or status == FS.cancelled:
            raise Conflict(
                f"finetune '{finetune_id}' is {status.value}; PUT /v1/finetune/{finetune_id} with its datasets resets it"
            )
        if not row["training_dataset_id"]:
            raise Conflict(f"attach a training dataset first: PUT /v1/finetune/{finetune_id} {{\"training_dataset_id\"}}")
        datasets.dataset_for_finetune(gw, conn, row["training_dataset_id"], who.workspace_id, "training")
        if row["validation_dataset_id"]:
            datasets.dataset_for_finetune(gw, conn, row["validation_dataset_id"], who.workspace_id, "validation")
        status = FS(db.get_finetune(conn, finetune_id, None)["status"])  # attaching a landed upload may reset it
        moved = db.set_finetune_status(
            conn, finetune_id, FS.validation_in_progress, message="dataset validation queued",
            only_from=frozenset({status}), validation_run=uuid.uuid4().hex, validation_claimed_by=None,
            validation={"started_at": db.utcnow().isoformat()},
        )
        if not moved:
            raise Conflict(f"finetune '{finetune_id}' changed while queueing its validation; try again")
    gw.wake_validation()
    return get(gw, who, finetune_id)


# --------------------------------------------------------------------------- start / cancel


def start(gw: Gateway, who: Principal, finetune_id: str, body: FinetuneStart) -> FinetunePublic:
    """Submit the training job; only a job the service accepted makes the finetune ``pending``.

    Raises: NotFound; Conflict (not validated, datasets gone, a start already in flight);
    Unprocessable (the service refused the request); ServiceUnavailable (service down or slow:
    the finetune stays ``pk_dataset_validation_successfull``)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
        status = FS(row["status"])
        if status != FS.validation_successful:
            hint = (
                "run POST /v1/finetune/{id}/validation/start and wait for pk_dataset_validation_successfull"
                if not (status.has_job or status.terminal) else "it was already started"
            )
            raise Conflict(f"finetune '{finetune_id}' cannot start from status '{status.value}': {hint}")
        # the files validated are the files trained on: a new upload would have reset the status
        train = datasets.dataset_for_finetune(gw, conn, row["training_dataset_id"], who.workspace_id, "training",
                                              attach_landed=False)
        val = (
            datasets.dataset_for_finetune(gw, conn, row["validation_dataset_id"], who.workspace_id, "validation",
                                          attach_landed=False)
            if row["validation_dataset_id"] else None
        )
        job_id = job_id_for(finetune_id, row["attempts"] + 1)
        field = "override_model" if body.override_model else "model"
        model = modelrefs.resolve(conn, gw.settings, body.override_model or row["model"], who.workspace_id, field=field)
        request = _training_request(gw, dict(row), job_id=job_id, model=model, train_uri=train["uri"],
                                    validation_uri=val["uri"] if val else None)
        claimed = db.update_finetune(
            conn, finetune_id, db.finetunes.c.status == FS.validation_successful.value,
            db.finetunes.c.start_claimed_at.is_(None),
            start_claimed_at=db.utcnow(), job_id=job_id, attempts=row["attempts"] + 1, override_model=body.override_model,
        )
        if not claimed:
            raise Conflict(f"finetune '{finetune_id}' is already being started")
    payload = request.model_dump(mode="json")
    token = gw.box.open(row["secrets"]).get("virtual_key")
    if token:  # model_dump masks secrets; the service needs the value (it stores it write-only)
        payload["base_model"]["huggingface_token"] = token
    try:
        job = gw.trainers.submit(row["service"], payload)
    except ServiceNoAnswer:
        # The service may or may not have the job: keep the claim, the refresher settles it.
        raise
    except Conflict:
        try:  # an earlier try of ours created it, or someone else did: only ours is adopted
            job = adoptable(gw.trainers.get_job(row["service"], job_id), row, TrainingRequest.model_validate(payload))
        except TrainyardError:
            _release_start(gw, finetune_id, job_id)
            raise
    except TrainyardError:
        _release_start(gw, finetune_id, job_id)
        raise
    _record_started(gw, finetune_id, job_id, job)
    return get(gw, who, finetune_id)


def job_id_for(finetune_id: str, attempt: int) -> str:
    """``<finetune>-<attempt>-<random>``: the random part makes the id unguessable, so nobody can
    create a job under it on the trainer service before the gateway does."""
    return f"{finetune_id}-{attempt}-{secrets.token_hex(JOB_ID_RANDOM_BYTES)}"


def adoptable(job: dict[str, Any], row: RowMapping, sent: TrainingRequest) -> dict[str, Any]:
    """The existing job with our id, if it is the one this gateway sent: same finetune, workspace and
    project in its labels and the same request digest (secrets included). Anything else is a job
    someone else created under that id, and using it would hand them this finetune.

    Raises: Conflict (not ours)."""
    ours = (
        _labelled_for(job, row)
        and isinstance(job.get("request_digest"), str)
        and hmac.compare_digest(job["request_digest"], sent.digest())
    )
    if not ours:
        log.warning("finetune %s: the %s service already holds a job %s that this gateway did not submit; "
                    "not adopting it", row["id"], row["service"], job.get("id"))
        raise Conflict(f"the trainer service already has a different job with id '{job.get('id')}'; "
                       f"start finetune '{row['id']}' again")
    return job


def _labelled_for(job: dict[str, Any], row: RowMapping) -> bool:
    labels = job.get("labels") or {}
    return bool(
        labels.get("workspace") == row["workspace_id"] and labels.get("project") == row["project_id"]
        and labels.get("finetune") == row["id"]
    )


def _release_start(gw: Gateway, finetune_id: str, job_id: str) -> None:
    """Undo a start claim whose job was never created: no trace but the event log."""
    with tx(gw.engine) as conn:
        released = db.update_finetune(
            conn, finetune_id, db.finetunes.c.job_id == job_id, db.finetunes.c.start_claimed_at.is_not(None),
            start_claimed_at=None, job_id=None, override_model=None, attempts=db.finetunes.c.attempts - 1,
        )
        if released:
            db.add_event(conn, finetune_id, EV.start, f"start of job {job_id} failed; nothing was started",
                         level=EventLevel.warning)


def _record_started(gw: Gateway, finetune_id: str, job_id: str, job: dict[str, Any]) -> None:
    with tx(gw.engine) as conn:
        db.set_finetune_status(
            conn, finetune_id, FS.pending, message=f"job {job_id} accepted by the trainer service",
            data={"job_id": job_id}, only_from=frozenset({FS.validation_successful}),
            where=(db.finetunes.c.job_id == job_id,), start_claimed_at=None, **_job_values(job),
        )
        _mirror(conn, finetune_id, job)  # the job may already be past pending


def settle_start_claims(gw: Gateway, older_than: timedelta) -> None:
    """Starts the gateway could not confirm (it died, or the service timed out): ask the service."""
    with tx(gw.engine) as conn:
        rows = db.stale_start_claims(conn, db.utcnow() - older_than)
    for row in rows:
        try:
            job = gw.trainers.get_job(row["service"], row["job_id"], timeout=READ_TIMEOUT)
        except NotFound:
            _release_start(gw, row["id"], row["job_id"])
            log.info("finetune %s: start of %s never reached the service; released", row["id"], row["job_id"])
            continue
        except TrainyardError as e:
            log.info("finetune %s: cannot settle its start yet (%s)", row["id"], e.error)
            continue
        if not _labelled_for(job, row):  # the id is unguessable, but never adopt another's job
            _release_start(gw, row["id"], row["job_id"])
            log.warning("finetune %s: job %s on the service is not this finetune's; released", row["id"], row["job_id"])
            continue
        _record_started(gw, row["id"], row["job_id"], job)


def cancel(gw: Gateway, who: Principal, finetune_id: str) -> FinetunePublic:
    """Cancel the job of a started finetune, or abandon one that has not started.

    Raises: NotFound; Conflict (already ended); ServiceUnavailable (status unchanged)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
    status = FS(row["status"])
    if status.terminal:
        raise Conflict(f"finetune '{finetune_id}' already {status.value}")
    if status.has_job:
        try:
            job = gw.trainers.cancel(row["service"], row["job_id"])
        except Conflict:
            job = gw.trainers.get_job(row["service"], row["job_id"])
            with tx(gw.engine) as conn:
                _mirror(conn, finetune_id, job)
            raise Conflict(f"finetune '{finetune_id}' already {job.get('status')}") from None
        with tx(gw.engine) as conn:
            _mirror(conn, finetune_id, job)
    else:
        with tx(gw.engine) as conn:
            if row["start_claimed_at"] is not None:
                raise Conflict(f"finetune '{finetune_id}' is being started; cancel it once it is pending")
            moved = db.set_finetune_status(
                conn, finetune_id, FS.cancelled, message="cancelled before training started",
                level=EventLevel.warning, only_from=frozenset({status}), finished_at=db.utcnow(),
            )
        if not moved:
            raise Conflict(f"finetune '{finetune_id}' changed while cancelling it; try again")
    return get(gw, who, finetune_id)


# --------------------------------------------------------------------------- mirroring the job


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _job_values(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "progress": job.get("progress") or {},
        "metrics": job.get("metrics") or {},
        "error": job.get("error"),
        "output_uri": job.get("output_uri"),
        "log_uri": job.get("log_uri"),
        "started_at": _parse_time(job.get("started_at")),
        "finished_at": _parse_time(job.get("finished_at")),
        "refreshed_at": db.utcnow(),
    }


def _mirror(conn: Connection, finetune_id: str, job: dict[str, Any]) -> None:
    """Copy a job's state onto its finetune; a status change goes through the transition table."""
    job_id = job.get("id")
    values = _job_values(job)
    try:
        to = FS(str(job.get("status")))
    except ValueError:
        log.warning("finetune %s: job %s has an unknown status %r", finetune_id, job_id, job.get("status"))
        return
    same_job = db.finetunes.c.job_id == job_id
    moved = to != FS.pending and db.set_finetune_status(
        conn, finetune_id, to, message=f"job {job_id} {to.value}", data={"job_id": job_id},
        level=EventLevel.error if to == FS.failed else EventLevel.info,
        only_from=FINETUNE_ACTIVE, where=(same_job,), **values,
    )
    if not moved:
        db.update_finetune(conn, finetune_id, same_job, db.finetunes.c.status.in_([s.value for s in FINETUNE_ACTIVE]),
                           **values)


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
    with tx(gw.engine) as conn:
        _mirror(conn, finetune_id, job)
    if job.get("status") == FS.completed.value:
        try:
            models.register(gw, finetune_id)
        except TrainyardError as e:  # the refresher's next tick registers it
            log.warning("finetune %s: model not registered yet: %s", finetune_id, e.detail)
