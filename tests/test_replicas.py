"""Two replicas of a trainer service, one PostgreSQL: each job launches exactly once.

Two real uvicorn processes of ``services.huggingface.app`` share one PostgreSQL database
(as two pods of a Deployment would) and race on the same submissions: every request is
sent to both at once. The jobs are real training-program runs on the local runner that
fail fast (the base model does not exist), so the race is over claims and status updates
rather than over training time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from common import db
from tests.utils.factories import training_request
from tests.utils.server import Server, wait_for

APP = "services.huggingface.app:app"
JOBS = 12
ORDER = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.mark.postgres
def test_two_replicas_launch_each_job_exactly_once(pg_database: str, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    (objects / "train.jsonl").write_text(ROW * 4)
    common = {"TRAINYARD_DATABASE_URL": pg_database, "TRAINYARD_STORAGE_ROOT": str(objects),
              "TRAINYARD_LOCAL_SLOTS": "4", "TRAINYARD_CANCEL_GRACE_SECONDS": "3"}
    replicas = [
        Server(APP, {**common, "TRAINYARD_LOG_DIR": str(tmp_path / f"logs-{i}")}, log_path=tmp_path / f"replica-{i}.log")
        for i in range(2)
    ]
    for r in replicas:
        r.start()
    clients = [r.client(timeout=60) for r in replicas]
    try:
        requests = [training_request((objects / "no-such-model").as_uri(), (objects / "train.jsonl").as_uri())
                    for _ in range(JOBS)]
        with ThreadPoolExecutor(max_workers=2 * JOBS) as pool:
            answers = list(pool.map(lambda args: args[0].post("/train", json=args[1]),
                                    [(c, req) for req in requests for c in clients]))
        for i, req in enumerate(requests):
            codes = sorted(a.status_code for a in answers[2 * i: 2 * i + 2])
            assert codes == [202, 409], (req["job_id"], [a.text for a in answers[2 * i: 2 * i + 2]])

        ids = [req["job_id"] for req in requests]
        for job_id in ids:
            wait_for(clients[0], f"/jobs/{job_id}", lambda j: j["status"] in ("completed", "failed"), timeout=240)

        for job_id in ids:
            views = [c.get(f"/jobs/{job_id}").json() for c in clients]
            assert views[0] == views[1], "both replicas answer alike for every job"
            assert views[0]["status"] == "failed" and views[0]["error"]["code"] == "model_load_failed", views[0]
            events = [c.get(f"/jobs/{job_id}/events").json()["data"] for c in clients]
            assert events[0] == events[1]
            launched = [e for e in events[0] if e["type"] == "status" and e["message"].startswith("launched by")]
            assert len(launched) == 1, f"{job_id} launched {len(launched)} times"
            statuses = [e["data"]["status"] for e in events[0] if e["type"] == "status" and "status" in e["data"]]
            assert statuses == ["pending", "running", "failed"], statuses
            assert all(ORDER[a] <= ORDER[b] for a, b in zip(statuses, statuses[1:], strict=False))
            for c in clients:  # the log is readable from either replica (the other reads the log_uri copy)
                logs = c.get(f"/jobs/{job_id}/logs", params={"tail": 0}).json()["logs"]
                assert any("no model files under" in line for line in logs), (c.base_url, logs)
        for c in clients:
            listed = c.get("/jobs", params={"limit": 1000}).json()
            assert set(ids) <= {j["id"] for j in listed["data"]}
        # the race was real: both replicas claimed jobs (4 slots each, 12 jobs)
        engine = create_engine(pg_database)
        with engine.connect() as conn:
            claimers = {row[0] for row in conn.execute(select(db.jobs.c.claimed_by).where(db.jobs.c.id.in_(ids)))}
        engine.dispose()
        assert len(claimers) == 2, claimers
    finally:
        for c in clients:
            c.close()
        for r in replicas:
            r.stop()
