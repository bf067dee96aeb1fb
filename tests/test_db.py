"""Repository tests, run against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from common import db
from common.errors import Conflict, NotFound
from common.schemas import EventType, JobStatus


@pytest.fixture
def engine(database_url: str):
    """The session's PostgreSQL database is shared with the service tests: start empty."""
    eng = db.make_engine(database_url)
    db.init_db(eng)
    with db.tx(eng) as conn:
        conn.execute(db.events.delete())
        conn.execute(db.jobs.delete())
    yield eng
    eng.dispose()


def _job(job_id: str, backend: str = "huggingface") -> dict:
    return {"id": job_id, "backend": backend, "request": {"a": 1}, "secrets": {"huggingface_token": "s"},
            "labels": {"workspace": "w1"}, "progress": {}, "metrics": {}}


def test_insert_get_list_and_duplicate(engine) -> None:
    with db.tx(engine) as conn:
        db.insert_job(conn, _job("j1"))
        db.insert_job(conn, _job("j2", backend="dpo"))
    with db.tx(engine) as conn:
        with pytest.raises(Conflict):
            db.insert_job(conn, _job("j1"))
        pub = db.job_public(db.get_job_row(conn, "j1"))
        assert pub.status == JobStatus.pending and pub.created_at.tzinfo is not None
        assert "secrets" not in pub.model_dump()
        rows, count = db.list_job_rows(conn, backend="huggingface")
        assert count == 1 and rows[0]["id"] == "j1"
        rows, count = db.list_job_rows(conn, labels={"workspace": "w1"})
        assert count == 2
        with pytest.raises(NotFound):
            db.get_job_row(conn, "nope")


def test_transition_table_is_enforced_and_recorded(engine) -> None:
    with db.tx(engine) as conn:
        db.insert_job(conn, _job("j1"))
        assert not db.set_status(conn, "j1", JobStatus.completed, message="skip running")
        assert db.set_status(conn, "j1", JobStatus.running, message="go")
        assert db.set_status(conn, "j1", JobStatus.cancelled, message="stop")
        # a late failure report must not overwrite the cancellation
        assert not db.set_status(conn, "j1", JobStatus.failed, message="late", error={"code": "x", "message": "y"})
        row = db.get_job_row(conn, "j1")
        assert row["status"] == "cancelled" and row["error"] is None
        assert row["started_at"] is not None and row["finished_at"] is not None
        evs = db.list_events(conn, "j1")
    assert [e.data["status"] for e in evs if e.type == EventType.status] == ["running", "cancelled"]


def test_claim_is_exclusive_under_a_race(engine) -> None:
    with db.tx(engine) as conn:
        for i in range(20):
            db.insert_job(conn, _job(f"j{i:02d}"))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with db.tx(engine) as conn:
                got = db.claim_next_pending(conn, "huggingface", name)
            if got is None:
                return
            with lock:
                claimed.append(got)

    threads = [threading.Thread(target=worker, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"j{i:02d}" for i in range(20)]  # each exactly once


def test_job_list_is_filtered_ordered_and_paged_in_sql(engine) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with db.tx(engine) as conn:
        for i in range(7):
            row = {**_job(f"j{i}", backend="dpo" if i == 3 else "huggingface"), "created_at": t0 + timedelta(minutes=i)}
            row["labels"] = {"workspace": "w1" if i % 2 else "w2", "team": "a"}
            db.insert_job(conn, row)
        db.set_status(conn, "j5", JobStatus.running, message="go")
    with db.tx(engine) as conn:
        rows, count = db.list_job_rows(conn, backend="huggingface", limit=2, offset=1)
        assert count == 6 and [r["id"] for r in rows] == ["j5", "j4"]  # newest first, after skipping j6
        rows, count = db.list_job_rows(conn, backend="huggingface", limit=10, offset=5)
        assert count == 6 and [r["id"] for r in rows] == ["j0"]
        rows, count = db.list_job_rows(conn, backend="huggingface", status=JobStatus.running)
        assert count == 1 and rows[0]["id"] == "j5"
        rows, count = db.list_job_rows(conn, labels={"workspace": "w1", "team": "a"}, limit=2)
        assert count == 3 and [r["id"] for r in rows] == ["j5", "j3"]
        assert db.list_job_rows(conn, labels={"workspace": "nobody"}) == ([], 0)


def test_events_page_by_cursor(engine) -> None:
    with db.tx(engine) as conn:
        db.insert_job(conn, _job("j1"))
        db.insert_job(conn, _job("j2"))
        for i in range(5):
            db.add_event(conn, "j1", EventType.log, f"line {i}")
            db.add_event(conn, "j2", EventType.log, f"other {i}")
    with db.tx(engine) as conn:
        first = db.list_events(conn, "j1", limit=2)
        rest = db.list_events(conn, "j1", after_id=first[-1].id, limit=10)
    assert [e.message for e in first + rest] == [f"line {i}" for i in range(5)]
    assert all(e.job_id == "j1" for e in rest)


def test_init_db_adds_new_indexes_to_an_existing_database(engine) -> None:
    """A database created before these indexes existed gets them on the next start (twice is harmless)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_jobs_backend_created")
        conn.exec_driver_sql("DROP INDEX ix_events_job_id_id")
    assert "ix_jobs_backend_created" not in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    db.init_db(engine)
    db.init_db(engine)
    for table in (db.jobs, db.events):
        present = {i["name"] for i in inspect(engine).get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= present, (table.name, present)
