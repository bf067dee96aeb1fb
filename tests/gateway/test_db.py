"""The gateway's repository: finetune status changes and events, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect

from common.db import make_engine, tx
from common.schemas import FINETUNE_TRANSITIONS, FinetuneStatus
from gateway import db

FS = FinetuneStatus


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The session's PostgreSQL database is shared with other tests: every id here is fresh (``_id``)."""
    eng = make_engine(database_url)
    db.init_db(eng)
    yield eng
    eng.dispose()


def _id() -> str:
    return f"ft-{uuid.uuid4().hex[:12]}"


def _finetune(finetune_id: str) -> dict:
    return {"id": finetune_id, "workspace_id": "w1", "project_id": "p1", "name": "n", "provider": "huggingface",
            "service": "huggingface", "training_type": "sft", "model": "m", "hyperparameters": {}, "secrets": {}}


def test_status_moves_follow_the_transition_table_and_are_recorded(engine: Engine) -> None:
    fid = _id()
    with tx(engine) as conn:
        db.insert_finetune(conn, _finetune(fid))
        assert not db.set_finetune_status(conn, fid, FS.running, message="skips validation and start")
        assert db.set_finetune_status(conn, fid, FS.validation_in_progress, message="queued", validation_run="r1")
        # narrowed: only from a status it is not in
        assert not db.set_finetune_status(conn, fid, FS.cancelled, message="x", only_from=frozenset({FS.created}))
        assert not db.set_finetune_status(conn, fid, FS.validation_failed, message="stale run",
                                          where=(db.finetunes.c.validation_run == "r0",))
        assert db.set_finetune_status(conn, fid, FS.validation_successful, message="valid", data={"rows": 3},
                                      where=(db.finetunes.c.validation_run == "r1",))
        db.add_event(conn, fid, db.FinetuneEventType.model, "model registered")
        pub = db.finetune_public(db.get_finetune(conn, fid, "w1"))
        evs = db.list_events(conn, fid, after_id=0, limit=100)
    assert pub.status == FS.validation_successful and pub.job_id is None and pub.fine_tuned_model is None
    assert [(e.type, e.data.get("status")) for e in evs] == [
        ("status", "created"), ("status", "pk_dataset_validation_in_progress"),
        ("status", "pk_dataset_validation_successfull"), ("model", None),
    ]
    assert evs[2].data["rows"] == 3 and evs[2].message == "valid"
    assert {t.value for t in db.FinetuneEventType} >= {e.type for e in evs}


def test_every_transition_of_the_table_is_allowed_and_no_other(engine: Engine) -> None:
    for src, targets in FINETUNE_TRANSITIONS.items():
        for to in FS:
            fid = _id()
            with tx(engine) as conn:
                db.insert_finetune(conn, _finetune(fid))
                conn.execute(db.finetunes.update().where(db.finetunes.c.id == fid).values(status=src.value))
                assert db.set_finetune_status(conn, fid, to, message="m") == (to in targets), (src, to)


def test_events_page_by_cursor(engine: Engine) -> None:
    a, b = _id(), _id()
    with tx(engine) as conn:
        for fid in (a, b):
            db.insert_finetune(conn, _finetune(fid))
        for i in range(4):
            db.add_event(conn, a, db.FinetuneEventType.start, f"a{i}")
            db.add_event(conn, b, db.FinetuneEventType.start, f"b{i}")
        first = db.list_events(conn, a, after_id=0, limit=3)
        rest = db.list_events(conn, a, after_id=first[-1].id, limit=3)
    assert [e.message for e in first + rest] == ["finetune created", "a0", "a1", "a2", "a3"]


def test_init_db_adds_new_indexes_to_an_existing_database(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_finetune_events_finetune_id_id")
        conn.exec_driver_sql("DROP INDEX ix_finetunes_workspace_status_created")
    db.init_db(engine)
    for table in (db.finetunes, db.finetune_events):
        present = {i["name"] for i in inspect(engine).get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= present, (table.name, present)
