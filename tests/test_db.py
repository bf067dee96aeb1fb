"""Repository tests, run against SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

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
