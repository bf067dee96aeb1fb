"""SQLAlchemy 2 tables and repository functions for jobs and their events.

SQLite (file, WAL) is the embedded default and PostgreSQL what a cluster uses; every
query here runs on both. Status changes are conditional UPDATEs (``WHERE status IN
allowed``), so several replicas racing on one row can never move a job backwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

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

from common import idempotency
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
from common.statuslog import StatusLog, utcnow

metadata = MetaData()


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


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
Index("ix_jobs_backend_created", jobs.c.backend, jobs.c.created_at)  # the job list of one backend

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("level", String(16), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False, default=dict),
)
Index("ix_events_job_id_id", events.c.job_id, events.c.id)  # a job's events after a cursor

JOB_LOG = StatusLog(jobs, TRANSITIONS, events, "job_id", EventType.status)


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
    idempotency.init_table(engine)
    add_missing_columns(engine, metadata)
    add_missing_indexes(engine, metadata)


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


def add_missing_indexes(engine: Engine, meta: MetaData) -> None:
    """Create the indexes a newer version defines on tables an older one created (``create_all``
    creates a missing table's indexes only). ``IF NOT EXISTS`` on both dialects: cheap on every start."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.schema import CreateIndex

    for table in meta.sorted_tables:
        for index in table.indexes:
            try:
                with engine.begin() as conn:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            except DBAPIError:  # another process created it at the same moment
                if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
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
    """One page of jobs, newest first, and how many match; filtered, ordered and paged in SQL
    (``ix_jobs_backend_created``, ``ix_jobs_backend_status_created``)."""
    where: list[Any] = []
    if backend:
        where.append(jobs.c.backend == backend)
    if status:
        where.append(jobs.c.status == status.value)
    for key, value in (labels or {}).items():
        where.append(jobs.c.labels[key].as_string() == value)
    count = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar() or 0
    q = select(jobs).where(*where).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)
    return list(conn.execute(q).mappings()), int(count)


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
    return JOB_LOG.move(conn, job_id, to, message=message, level=level, data=data, updated_at=now, **extra, **values)


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
    JOB_LOG.record(conn, job_id, type_, message, level=level, data=data)


def event_public(r: RowMapping) -> EventPublic:
    return EventPublic(
        id=r["id"], job_id=r["job_id"], created_at=aware(r["created_at"]), level=EventLevel(r["level"]),
        type=EventType(r["type"]), message=r["message"], data=r["data"] or {},
    )


def list_events(conn: Connection, job_id: str, *, after_id: int = 0, limit: int = 1000) -> list[EventPublic]:
    return [event_public(r) for r in JOB_LOG.after(conn, job_id, after_id=after_id, limit=limit)]
