"""The gateway's tables and repository functions: API keys (hashed), datasets, finetunes,
finetune events and the models registry.

Own ``MetaData`` so the gateway never creates the trainer services' tables and vice versa; the
names do not clash, so both may share one database (the laptop default). Every query runs on
SQLite and PostgreSQL. Status changes are conditional UPDATEs guarded by
``FINETUNE_TRANSITIONS`` (``set_finetune_status``, through ``common.statuslog``), so two gateway
replicas, or a request racing the background refresher, can never move a finetune backwards.
Each table's row-to-model conversion (``*_public``) sits with its repository functions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from common import idempotency
from common.db import add_missing_columns, add_missing_indexes, aware
from common.errors import NotFound
from common.schemas import (
    FINETUNE_ACTIVE,
    FINETUNE_TRANSITIONS,
    DatasetPublic,
    EventLevel,
    FinetuneEventPublic,
    FinetuneHyperparameters,
    FinetunePublic,
    FinetuneRun,
    FinetuneStatus,
    FinetuneValidation,
    ModelKind,
    ModelMetrics,
    ModelPublic,
    Resources,
    ValidationReport,
)
from common.statuslog import StatusLog, utcnow

metadata = MetaData()


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("workspace_id", String(64), nullable=False, index=True),
    Column("scopes", JSON, nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; the key itself is never stored
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("type", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("model", Text),
    Column("status", String(24), nullable=False),
    Column("target_key", Text, nullable=False),  # where the signed URL puts the file
    Column("s3_path", Text),  # attached key, relative to the storage base
    Column("uri", Text),  # attached object's full URI
    Column("size_bytes", Integer),
    Column("rows", Integer),
    Column("validation_status", String(48)),
    Column("validation", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_datasets_workspace_created", datasets.c.workspace_id, datasets.c.created_at)

finetunes = Table(
    "finetunes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("service", String(32), nullable=False),
    Column("training_type", String(8), nullable=False),
    Column("model", Text, nullable=False),
    Column("override_model", Text),
    Column("hyperparameters", JSON, nullable=False),
    Column("resources", JSON),
    Column("secrets", JSON, nullable=False),  # virtual_key; never serialised to a response
    Column("training_dataset_id", String(40), index=True),
    Column("validation_dataset_id", String(40), index=True),
    Column("status", String(48), nullable=False, index=True),
    Column("validation", JSON),
    Column("validation_run", String(40)),  # id of the current validation; results of older runs are dropped
    Column("validation_claimed_by", String(128)),
    Column("validation_heartbeat_at", DateTime(timezone=True)),
    Column("job_id", String(64)),
    Column("start_claimed_at", DateTime(timezone=True)),  # set while POST /train is in flight
    Column("attempts", Integer, nullable=False, default=0),
    Column("progress", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("error", JSON),
    Column("output_uri", Text),
    Column("log_uri", Text),
    Column("refreshed_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("runs", JSON),  # every ended job: [{job_id, status, output_uri, ...}]; a reset keeps them
    Column("job_events_after", Integer),  # the current job's last event copied (a cursor on the service)
)
Index("ix_finetunes_workspace_created", finetunes.c.workspace_id, finetunes.c.created_at)
Index("ix_finetunes_workspace_status_created", finetunes.c.workspace_id, finetunes.c.status, finetunes.c.created_at)

# Signed upload URLs already used (single use): the signature's SHA-256 until the URL would expire.
used_upload_urls = Table(
    "used_upload_urls",
    metadata,
    Column("sig_hash", String(64), primary_key=True),
    Column("dataset_id", String(40), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

finetune_events = Table(
    "finetune_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("finetune_id", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("level", String(16), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False),
)
Index("ix_finetune_events_finetune_id_id", finetune_events.c.finetune_id, finetune_events.c.id)  # after a cursor


class FinetuneEventType(StrEnum):
    """What a finetune event records (the ``type`` of GET /v1/finetune/{id}/events)."""

    status = "status"  # every status change (FINETUNE_LOG.move)
    validation = "validation"  # a validation run interrupted
    start = "start"  # a start that created no job
    model = "model"  # its model registered, exported or deleted
    metrics = "metrics"  # the job's per-step progress (step, loss, eval_loss, learning_rate) and final metrics


FINETUNE_LOG = StatusLog(finetunes, FINETUNE_TRANSITIONS, finetune_events, "finetune_id", FinetuneEventType.status)

# One row per finetune that completed (id ``ft:<finetune id>``); a deleted model keeps its row
# (deleted_at set) so the refresher never registers it again.
models = Table(
    "models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("finetune_id", String(40), nullable=False, index=True),  # the id is derived from it: one row each
    Column("job_id", String(64), nullable=False),  # the job whose output this is (a re-run replaces it)
    Column("name", String(255), nullable=False),
    Column("base_model", Text, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("training_type", String(8), nullable=False),
    Column("method", String(8), nullable=False),
    Column("training_params", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("adapter_uri", Text),
    Column("merged_uri", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
)
Index("ix_models_workspace_created", models.c.workspace_id, models.c.created_at)
MODEL_ID_PREFIX = "ft:"


def model_id(finetune_id: str) -> str:
    """The id of the model a finetune produces (known from its creation on)."""
    return f"{MODEL_ID_PREFIX}{finetune_id}"


def finetune_id_of(model_id: str) -> str | None:
    return model_id[len(MODEL_ID_PREFIX):] if model_id.startswith(MODEL_ID_PREFIX) else None


def init_db(engine: Engine) -> None:
    metadata.create_all(engine)
    idempotency.init_table(engine)
    add_missing_columns(engine, metadata)
    add_missing_indexes(engine, metadata)


def sealed_finetunes() -> tuple[Callable[[Engine], None], Table]:
    """The gateway's table with encrypted secret columns, for `trainyard secrets rotate` (an entry point)."""
    return init_db, finetunes


# --------------------------------------------------------------------------- api keys


def insert_key(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(api_keys).values(created_at=utcnow(), **row))


def key_by_hash(conn: Connection, key_hash: str) -> RowMapping | None:
    return conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).mappings().first()


def list_keys(conn: Connection, workspace_id: str | None = None) -> list[RowMapping]:
    q = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if workspace_id:
        q = q.where(api_keys.c.workspace_id == workspace_id)
    return list(conn.execute(q).mappings())


def revoke_key(conn: Connection, key_id: str) -> bool:
    res = conn.execute(
        update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount == 1


def touch_key(conn: Connection, key_id: str, now: datetime) -> None:
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))


# --------------------------------------------------------------------------- datasets


def insert_dataset(conn: Connection, row: dict[str, Any]) -> None:
    now = utcnow()
    conn.execute(insert(datasets).values(created_at=now, updated_at=now, **row))


def dataset_public(row: RowMapping) -> DatasetPublic:
    report = row["validation"]
    return DatasetPublic(
        id=row["id"], name=row["name"], type=row["type"], provider=row["provider"], model=row["model"],
        workspace_id=row["workspace_id"], project_id=row["project_id"], status=row["status"],
        s3_path=row["s3_path"], uri=row["uri"], size_bytes=row["size_bytes"], rows=row["rows"],
        validation_status=row["validation_status"], validation=ValidationReport.model_validate(report) if report else None,
        created_at=aware(row["created_at"]), updated_at=aware(row["updated_at"]),
    )


def get_dataset(conn: Connection, dataset_id: str, workspace_id: str | None) -> RowMapping:
    """The dataset, only if it belongs to ``workspace_id`` (None: any workspace, for workers).

    Raises: NotFound (also for another workspace's dataset: its existence is not revealed)."""
    q = select(datasets).where(datasets.c.id == dataset_id)
    if workspace_id is not None:
        q = q.where(datasets.c.workspace_id == workspace_id)
    row = conn.execute(q).mappings().first()
    if row is None:
        raise NotFound(f"dataset '{dataset_id}' not found")
    return row


def list_datasets(conn: Connection, workspace_id: str, *, limit: int, offset: int) -> tuple[list[RowMapping], int]:
    where = datasets.c.workspace_id == workspace_id
    count = conn.execute(select(func.count()).select_from(datasets).where(where)).scalar() or 0
    rows = conn.execute(
        select(datasets).where(where).order_by(datasets.c.created_at.desc(), datasets.c.id).limit(limit).offset(offset)
    ).mappings()
    return list(rows), int(count)


def update_dataset(conn: Connection, dataset_id: str, **values: Any) -> None:
    conn.execute(update(datasets).where(datasets.c.id == dataset_id).values(updated_at=utcnow(), **values))


def delete_dataset(conn: Connection, dataset_id: str) -> None:
    conn.execute(delete(datasets).where(datasets.c.id == dataset_id))


def finetunes_using(conn: Connection, dataset_id: str, statuses: frozenset[FinetuneStatus]) -> list[RowMapping]:
    q = select(finetunes.c.id, finetunes.c.status).where(
        or_(finetunes.c.training_dataset_id == dataset_id, finetunes.c.validation_dataset_id == dataset_id),
        finetunes.c.status.in_([s.value for s in statuses]),
    )
    return list(conn.execute(q).mappings())


def claim_upload_url(conn: Connection, sig_hash: str, dataset_id: str, expires_at: datetime) -> bool:
    """Mark a signed upload URL used; False when it was used before. Forgets URLs past their expiry."""
    conn.execute(delete(used_upload_urls).where(used_upload_urls.c.expires_at < utcnow()))
    try:
        with conn.begin_nested():
            conn.execute(insert(used_upload_urls).values(sig_hash=sig_hash, dataset_id=dataset_id, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


def release_upload_url(conn: Connection, sig_hash: str) -> None:
    """An upload that stored nothing gives its URL back."""
    conn.execute(delete(used_upload_urls).where(used_upload_urls.c.sig_hash == sig_hash))


# --------------------------------------------------------------------------- finetunes


def insert_finetune(conn: Connection, row: dict[str, Any]) -> None:
    now = utcnow()
    conn.execute(
        insert(finetunes).values(
            created_at=now, updated_at=now, status=FinetuneStatus.created.value, attempts=0, progress={}, metrics={},
            **row,
        )
    )
    add_event(conn, row["id"], FinetuneEventType.status, "finetune created",
              data={"status": FinetuneStatus.created.value})


def finetune_public(row: RowMapping) -> FinetunePublic:
    status = FinetuneStatus(row["status"])
    return FinetunePublic(
        id=row["id"], name=row["name"], workspace_id=row["workspace_id"], project_id=row["project_id"],
        provider=row["provider"], service=row["service"], training_type=row["training_type"], model=row["model"],
        override_model=row["override_model"], status=status,
        hyperparameters=FinetuneHyperparameters.model_validate(row["hyperparameters"] or {}),
        resources=Resources.model_validate(row["resources"]) if row["resources"] else None,
        training_dataset_id=row["training_dataset_id"], validation_dataset_id=row["validation_dataset_id"],
        validation=FinetuneValidation.model_validate(row["validation"]) if row["validation"] else None,
        job_id=row["job_id"] if status.has_job or status.terminal else None,
        progress=row["progress"] or {}, metrics=row["metrics"] or {}, error=row["error"],
        output_uri=row["output_uri"], log_uri=row["log_uri"],
        created_at=aware(row["created_at"]), updated_at=aware(row["updated_at"]),
        started_at=aware(row["started_at"]), finished_at=aware(row["finished_at"]),
        fine_tuned_model=model_id(row["id"]) if status == FinetuneStatus.completed else None,
        runs=[FinetuneRun.model_validate(r) for r in row["runs"] or []],
    )


def get_finetune(conn: Connection, finetune_id: str, workspace_id: str | None) -> RowMapping:
    """Raises: NotFound (also for another workspace's finetune)."""
    q = select(finetunes).where(finetunes.c.id == finetune_id)
    if workspace_id is not None:
        q = q.where(finetunes.c.workspace_id == workspace_id)
    row = conn.execute(q).mappings().first()
    if row is None:
        raise NotFound(f"finetune '{finetune_id}' not found")
    return row


def list_finetunes(
    conn: Connection, workspace_id: str, *, status: FinetuneStatus | None, limit: int, offset: int
) -> tuple[list[RowMapping], int]:
    where = [finetunes.c.workspace_id == workspace_id]
    if status is not None:
        where.append(finetunes.c.status == status.value)
    count = conn.execute(select(func.count()).select_from(finetunes).where(*where)).scalar() or 0
    rows = conn.execute(
        select(finetunes).where(*where).order_by(finetunes.c.created_at.desc(), finetunes.c.id).limit(limit).offset(offset)
    ).mappings()
    return list(rows), int(count)


def update_finetune(conn: Connection, finetune_id: str, *where: Any, **values: Any) -> bool:
    """Update fields (never the status: see set_finetune_status); extra ``where`` clauses make it conditional."""
    assert "status" not in values, "status changes go through set_finetune_status"
    res = conn.execute(
        update(finetunes).where(finetunes.c.id == finetune_id, *where).values(updated_at=utcnow(), **values)
    )
    return res.rowcount == 1


def set_finetune_status(
    conn: Connection,
    finetune_id: str,
    to: FinetuneStatus,
    *,
    message: str,
    level: EventLevel = EventLevel.info,
    data: dict[str, Any] | None = None,
    only_from: frozenset[FinetuneStatus] | None = None,
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """The one place a finetune's status changes: a conditional UPDATE guarded by the transition
    table (narrowed by ``only_from`` and ``where``), plus a status event. Returns False and changes
    nothing when the move is not allowed from the current status."""
    if only_from is not None:
        where = (finetunes.c.status.in_([s.value for s in only_from]), *where)
    return FINETUNE_LOG.move(conn, finetune_id, to, message=message, level=level, data=data, where=where, **values)


def active_finetune_ids(conn: Connection) -> list[str]:
    """Finetunes whose trainer job may still change (mirrored by the refresher)."""
    q = select(finetunes.c.id).where(finetunes.c.status.in_([s.value for s in FINETUNE_ACTIVE]))
    return list(conn.execute(q.order_by(finetunes.c.updated_at)).scalars())


def stale_start_claims(conn: Connection, older_than: datetime) -> list[RowMapping]:
    """Finetunes whose start was claimed but never recorded (the gateway died mid-start)."""
    q = select(finetunes).where(
        finetunes.c.status == FinetuneStatus.validation_successful.value,
        finetunes.c.start_claimed_at.is_not(None),
        finetunes.c.start_claimed_at < older_than,
    )
    return list(conn.execute(q).mappings())


def claim_validation(conn: Connection, worker: str, stale_before: datetime) -> RowMapping | None:
    """Claim the oldest finetune waiting for validation that no live worker holds; one replica wins."""
    waiting = (
        finetunes.c.status == FinetuneStatus.validation_in_progress.value,
        or_(finetunes.c.validation_claimed_by.is_(None), finetunes.c.validation_heartbeat_at < stale_before),
    )
    q = select(finetunes.c.id).where(*waiting).order_by(finetunes.c.updated_at, finetunes.c.id).limit(1)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    finetune_id = conn.execute(q).scalar()
    if finetune_id is None:
        return None
    res = conn.execute(
        update(finetunes)
        .where(finetunes.c.id == finetune_id, *waiting)
        .values(validation_claimed_by=worker, validation_heartbeat_at=utcnow())
    )
    if res.rowcount != 1:
        return None
    return get_finetune(conn, finetune_id, None)


# --------------------------------------------------------------------------- events


def add_event(
    conn: Connection,
    finetune_id: str,
    type_: FinetuneEventType,
    message: str,
    *,
    level: EventLevel = EventLevel.info,
    data: dict[str, Any] | None = None,
) -> None:
    FINETUNE_LOG.record(conn, finetune_id, type_, message, level=level, data=data)


def event_public(r: RowMapping) -> FinetuneEventPublic:
    return FinetuneEventPublic(
        id=r["id"], finetune_id=r["finetune_id"], created_at=aware(r["created_at"]), level=EventLevel(r["level"]),
        type=r["type"], message=r["message"], data=r["data"] or {},
    )


def list_events(conn: Connection, finetune_id: str, *, after_id: int, limit: int) -> list[FinetuneEventPublic]:
    return [event_public(r) for r in FINETUNE_LOG.after(conn, finetune_id, after_id=after_id, limit=limit)]


# --------------------------------------------------------------------------- models


def model_public(row: RowMapping) -> ModelPublic:
    created = aware(row["created_at"])
    return ModelPublic(
        id=row["id"], created=int(created.timestamp()) if created else 0, owned_by=row["workspace_id"],
        kind=ModelKind.fine_tuned, name=row["name"], base_model=row["base_model"], provider=row["provider"],
        method=row["method"], training_type=row["training_type"], training_params=row["training_params"],
        metrics=ModelMetrics.model_validate(row["metrics"]), size_bytes=row["size_bytes"],
        adapter_uri=row["adapter_uri"], merged_uri=row["merged_uri"], finetune_id=row["finetune_id"],
        workspace_id=row["workspace_id"], created_at=created,
    )


def insert_model_once(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a model row unless its id exists (another replica, or an earlier tick, won): True if inserted."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    q = dialect_insert(models).values(**row).on_conflict_do_nothing(index_elements=["id"]).returning(models.c.id)
    return conn.execute(q).first() is not None  # rowcount is -1 here on psycopg


def replace_model(conn: Connection, model_id: str, old_job_id: str, row: dict[str, Any]) -> bool:
    """Point a model at a newer job's output (its finetune was reset and ran again); conditional on the old job."""
    res = conn.execute(update(models).where(models.c.id == model_id, models.c.job_id == old_job_id).values(**row))
    return res.rowcount == 1


def get_model(conn: Connection, model_id: str, workspace_id: str | None, *, deleted: bool = False) -> RowMapping | None:
    """The model row in ``workspace_id`` (None: any), or None; deleted ones only when ``deleted``."""
    q = select(models).where(models.c.id == model_id)
    if workspace_id is not None:
        q = q.where(models.c.workspace_id == workspace_id)
    if not deleted:
        q = q.where(models.c.deleted_at.is_(None))
    return conn.execute(q).mappings().first()


def list_models(conn: Connection, workspace_id: str) -> list[RowMapping]:
    q = select(models).where(models.c.workspace_id == workspace_id, models.c.deleted_at.is_(None))
    return list(conn.execute(q.order_by(models.c.created_at.desc(), models.c.id)).mappings())


def update_model(conn: Connection, model_id: str, *where: Any, **values: Any) -> bool:
    res = conn.execute(update(models).where(models.c.id == model_id, models.c.deleted_at.is_(None), *where).values(**values))
    return res.rowcount == 1


def unregistered_finetunes(conn: Connection, workspace_id: str | None = None) -> list[str]:
    """Completed finetunes whose latest job has no model row yet (oldest first)."""
    q = (
        select(finetunes.c.id)
        .select_from(finetunes.outerjoin(models, models.c.finetune_id == finetunes.c.id))
        .where(
            finetunes.c.status == FinetuneStatus.completed.value,
            finetunes.c.output_uri.is_not(None),
            or_(models.c.id.is_(None), models.c.job_id != finetunes.c.job_id),
        )
        .order_by(finetunes.c.finished_at, finetunes.c.id)
    )
    if workspace_id is not None:
        q = q.where(finetunes.c.workspace_id == workspace_id)
    return list(conn.execute(q).scalars())
