"""Finetune operations behind /v1/finetune and /v1/dataservice/finetune.

A finetune is a base model, hyperparameters and datasets; it moves through

    created -> pk_dataset_validation_in_progress -> pk_dataset_validation_successfull | _failed
            -> (start) pending -> running -> completed | failed | cancelled

with every move checked against ``FINETUNE_TRANSITIONS`` and recorded as an event
(``gateway.db.set_finetune_status``). This module holds the user's commands; once started, a
finetune mirrors its trainer job (``gateway.mirror``). Starting is two-phase so a dead service
never leaves a half-started finetune: the start is claimed in the database (job id chosen),
``POST /train`` is called, and only a job the service accepted moves the finetune to ``pending``.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Connection

from common.db import tx
from common.errors import Conflict, NotFound, TrainyardError, Unprocessable
from common.schemas import (
    EventLevel,
    FinetuneCreate,
    FinetuneCreated,
    FinetuneEventPublic,
    FinetuneHyperparameters,
    FinetunePublic,
    FinetuneStart,
    FinetuneStatus,
    FinetuneUpdate,
    FinetuneValidation,
    LogsPublic,
    Resources,
    TrainingRequest,
    service_for,
)
from gateway import datasets, db, mirror, modelrefs
from gateway.auth import Principal
from gateway.context import Gateway
from gateway.trainers import ServiceNoAnswer

log = logging.getLogger("trainyard.gateway.finetunes")

FS = FinetuneStatus
EV = db.FinetuneEventType
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
    modelrefs.check_exists(body.model, gw.settings, token=body.virtual_key.get_secret_value() if body.virtual_key else None)
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
    if mirror.refresh_if_stale(gw, row):
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


def logs(gw: Gateway, who: Principal, finetune_id: str, tail: int) -> LogsPublic:
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
            "job_events_after": None,  # the ended jobs stay in ``runs``
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


def _start_hint(status: FS, finetune_id: str, validation: dict[str, Any] | None) -> str:
    """What to do before a finetune in ``status`` can start (for a failed validation, its first error)."""
    if status.has_job or status.terminal:
        return "it was already started"
    if status == FS.validation_in_progress:
        return (f"wait for validation to finish (status {status.value} now; start once "
                f"GET /v1/finetune/{finetune_id} shows {FS.validation_successful.value})")
    if status == FS.validation_failed:
        return f"its validation failed{_first_error(validation)}; fix the data, upload it again and validate again"
    return f"run POST /v1/finetune/{finetune_id}/validation/start and wait for {FS.validation_successful.value}"


def _first_error(validation: dict[str, Any] | None) -> str:
    """': <role> line N: <message>' for the first error the last validation listed, or ''."""
    report = FinetuneValidation.model_validate(validation) if validation else None
    if report is None:
        return ""
    if report.error:
        return f": {report.error}"
    for role, found in (("training", report.training), ("validation", report.validation)):
        if found is not None and found.errors:
            first = found.errors[0]
            where = f" line {first.line}" if first.line else ""
            return f": {role} dataset{where}: {first.message}"
    return ""


def start(gw: Gateway, who: Principal, finetune_id: str, body: FinetuneStart) -> FinetunePublic:
    """Submit the training job; only a job the service accepted makes the finetune ``pending``.

    Raises: NotFound; Conflict (not validated, datasets gone, a start already in flight);
    Unprocessable (the service refused the request); ServiceUnavailable (service down or slow:
    the finetune stays ``pk_dataset_validation_successfull``)."""
    if body.override_model:  # outside the transaction: it may wait for the hub
        with tx(gw.engine) as conn:
            row = db.get_finetune(conn, finetune_id, who.workspace_id)
        if FS(row["status"]) == FS.validation_successful:  # else the Conflict below says why not
            modelrefs.check_exists(body.override_model, gw.settings, field="override_model",
                                   token=gw.box.open(row["secrets"]).get("virtual_key"))
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
        status = FS(row["status"])
        if status != FS.validation_successful:
            hint = _start_hint(status, finetune_id, row["validation"])
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
            job_events_after=None,
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
            job = mirror.adoptable(gw.trainers.get_job(row["service"], job_id), row,
                                   TrainingRequest.model_validate(payload))
        except TrainyardError:
            mirror.release_start(gw, finetune_id, job_id)
            raise
    except TrainyardError:
        mirror.release_start(gw, finetune_id, job_id)
        raise
    mirror.record_started(gw, finetune_id, job_id, job)
    return get(gw, who, finetune_id)


def job_id_for(finetune_id: str, attempt: int) -> str:
    """``<finetune>-<attempt>-<random>``: the random part makes the id unguessable, so nobody can
    create a job under it on the trainer service before the gateway does."""
    return f"{finetune_id}-{attempt}-{secrets.token_hex(JOB_ID_RANDOM_BYTES)}"


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
                mirror.mirror(conn, finetune_id, job)
            raise Conflict(f"finetune '{finetune_id}' already {job.status.value}") from None
        try:
            mirror.copy_job_events(gw, finetune_id, row["service"], job.id, timeout=mirror.READ_TIMEOUT)
        except TrainyardError as e:  # the loss history is best effort here; the cancel itself went through
            log.info("finetune %s: job events not copied on cancel (%s)", finetune_id, e.error)
        with tx(gw.engine) as conn:
            mirror.mirror(conn, finetune_id, job)
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
