"""SQLAlchemy 2 tables and repository functions for jobs and their events.

SQLite (file, WAL) is the embedded default and PostgreSQL what a cluster uses; every
query here runs on both. Status changes are conditional UPDATEs (``WHERE status IN
allowed``), so several replicas racing on one row can never move a job backwards.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from common.errors import Conflict, NotFound
from common.schemas import (
    TERMINAL,
    TRANSITIONS,
    EventLevel,
    EventPublic,
    EventType,
    JobPublic,
    JobStatus,
)

metadata = MetaData()
StatusT = TypeVar("StatusT", bound=StrEnum)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def jsonable(data: dict[str, Any] | None) -> dict[str, Any]:
    """An event's ``data`` as plain JSON (datetimes, enums and the like become strings)."""
    return json.loads(json.dumps(data or {}, default=str))


def move_status(
    conn: Connection,
    table: Table,
    row_id: str,
    to: StatusT,
    transitions: Mapping[StatusT, Collection[StatusT]],
    *where: Any,
    **values: Any,
) -> bool:
    """The conditional UPDATE behind every status change of a job or a finetune: ``status = to``
    only where the row's status may move to ``to`` by ``transitions`` (and every extra ``where``
    holds), so replicas racing on one row can never move it backwards. Returns whether the row
    moved; the caller records the status event."""
    allowed_from = [s.value for s, targets in transitions.items() if to in targets]
    res = conn.execute(
        update(table)
        .where(table.c.id == row_id, table.c.status.in_(allowed_from), *where)
        .values(status=to.value, **values)
    )
    return res.rowcount == 1


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("backend", String(32), nullable=False, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("request", JSON, nullable=False),
    Column("secrets", JSON, nullable=False, default=dict),  # sealed (common.secretbox); never in a response
    Column("request_digest", String(64)),  # TrainingRequest.digest() of the request as submitted
    Column("progress", JSON, nullable=False, default=dict),
    Column("metrics", JSON, nullable=False, default=dict),
    Column("error", JSON, nullable=True),
    Column("labels", JSON, nullable=False, default=dict),
    Column("output_uri", Text),
    Column("log_uri", Text),
    Column("spec_uri", Text),
    Column("runner", String(16), nullable=False, default="local"),
    Column("runner_ref", Text),  # host:pid for local, Job name for kubernetes
    Column("claimed_by", String(128)),
    Column("progress_token_hash", String(64)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)
Index("ix_jobs_backend_status_created", jobs.c.backend, jobs.c.status, jobs.c.created_at)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("level", String(16), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False, default=dict),
)


def make_engine(url: str) -> Engine:
    """One engine per process; SQLite gets WAL and a busy timeout so threads and
    processes sharing the file wait instead of failing."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def init_db(engine: Engine) -> None:
    metadata.create_all(engine)
    add_missing_columns(engine, metadata)


def add_missing_columns(engine: Engine, meta: MetaData) -> None:
    """Add the nullable columns a newer version defines to tables an older one created
    (``create_all`` creates missing tables only). Anything else needs a real migration."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.schema import CreateColumn

    for table in meta.sorted_tables:
        insp = inspect(engine)
        if not insp.has_table(table.name):
            continue
        present = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            ddl = CreateColumn(column).compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
            except DBAPIError:  # another process added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


@contextmanager
def tx(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


# --------------------------------------------------------------------------- jobs


def insert_job(conn: Connection, row: dict[str, Any]) -> None:
    """Raises: Conflict when the job id already exists."""
    now = utcnow()
    values = {"created_at": now, "updated_at": now, "status": JobStatus.pending.value, **row}
    try:
        with conn.begin_nested():
            conn.execute(insert(jobs).values(**values))
    except IntegrityError as e:
        raise Conflict(f"a job with id '{row['id']}' already exists") from e


def get_job_row(conn: Connection, job_id: str) -> RowMapping:
    """Raises: NotFound."""
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise NotFound(f"job '{job_id}' not found")
    return row


def list_job_rows(
    conn: Connection,
    *,
    backend: str | None = None,
    status: JobStatus | None = None,
    labels: dict[str, str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[RowMapping], int]:
    q = select(jobs)
    if backend:
        q = q.where(jobs.c.backend == backend)
    if status:
        q = q.where(jobs.c.status == status.value)
    rows = conn.execute(q.order_by(jobs.c.created_at.desc(), jobs.c.id)).mappings().all()
    if labels:  # JSON filtering differs per dialect; label filters are rare and small
        rows = [r for r in rows if all((r["labels"] or {}).get(k) == v for k, v in labels.items())]
    return list(rows[offset : offset + limit]), len(rows)


def job_public(row: RowMapping) -> JobPublic:
    return JobPublic(
        id=row["id"],
        backend=row["backend"],
        status=JobStatus(row["status"]),
        progress=row["progress"] or {},
        metrics=row["metrics"] or {},
        error=row["error"],
        output_uri=row["output_uri"],
        log_uri=row["log_uri"],
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
        labels=row["labels"] or {},
        runner=row["runner"],
        runner_ref=row["runner_ref"],
        request=row["request"] or {},
        request_digest=row["request_digest"],
    )


def update_job(conn: Connection, job_id: str, **values: Any) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(updated_at=utcnow(), **values))


def set_status(
    conn: Connection,
    job_id: str,
    to: JobStatus,
    *,
    message: str,
    level: EventLevel = EventLevel.info,
    data: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """The one place a status changes: a conditional UPDATE guarded by the transition
    table, plus a status event. Returns False (and changes nothing) when the move is
    not allowed from the job's current status, e.g. a late 'failed' after 'cancelled'."""
    now = utcnow()
    extra: dict[str, Any] = {}
    if to == JobStatus.running:
        extra["started_at"] = now
    if to in TERMINAL:
        extra["finished_at"] = now
    if not move_status(conn, jobs, job_id, to, TRANSITIONS, updated_at=now, **extra, **values):
        return False
    add_event(conn, job_id, EventType.status, message, level=level, data={"status": to.value, **(data or {})})
    return True


def claim_next_pending(conn: Connection, backend: str, claimer: str) -> str | None:
    """Claim the oldest pending job of a backend for this replica: exactly one replica wins.

    PostgreSQL skips rows another replica holds (FOR UPDATE SKIP LOCKED); on both
    dialects the conditional UPDATE is what makes the claim exclusive."""
    q = (
        select(jobs.c.id)
        .where(jobs.c.backend == backend, jobs.c.status == JobStatus.pending.value, jobs.c.claimed_by.is_(None))
        .order_by(jobs.c.created_at, jobs.c.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    job_id = conn.execute(q).scalar()
    if job_id is None:
        return None
    res = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.pending.value, jobs.c.claimed_by.is_(None))
        .values(claimed_by=claimer, updated_at=utcnow())
    )
    return job_id if res.rowcount == 1 else None


def count_jobs(conn: Connection, backend: str, status: JobStatus) -> int:
    q = select(func.count()).select_from(jobs).where(jobs.c.backend == backend, jobs.c.status == status.value)
    return int(conn.execute(q).scalar() or 0)


# --------------------------------------------------------------------------- events


def add_event(
    conn: Connection,
    job_id: str,
    type_: EventType,
    message: str,
    *,
    level: EventLevel = EventLevel.info,
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(events).values(
            job_id=job_id,
            created_at=utcnow(),
            level=level.value,
            type=type_.value,
            message=message,
            data=jsonable(data),
        )
    )


def list_events(conn: Connection, job_id: str, *, after_id: int = 0, limit: int = 1000) -> list[EventPublic]:
    rows = conn.execute(
        select(events).where(events.c.job_id == job_id, events.c.id > after_id).order_by(events.c.id).limit(limit)
    ).mappings()
    return [
        EventPublic(
            id=r["id"],
            job_id=r["job_id"],
            created_at=aware(r["created_at"]),
            level=EventLevel(r["level"]),
            type=EventType(r["type"]),
            message=r["message"],
            data=r["data"] or {},
        )
        for r in rows
    ]
