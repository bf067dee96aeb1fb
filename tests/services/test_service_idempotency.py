"""Idempotency-Key on a trainer service over real HTTP: a replayed POST /train returns the same job
and launches it once (real training of the tiny model); a replayed cancel answers as the first did.
On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from common.idempotency import HEADER, REPLAYED_HEADER
from tests.utils.factories import training_request
from tests.utils.server import Server, wait_for

APP = "services.huggingface.app:app"
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def service(database_url: str, storage_root: Path, tmp_path: Path):
    env = {
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "TRAINYARD_CANCEL_GRACE_SECONDS": "3",
    }
    with Server(APP, env, log_path=tmp_path / "service.log") as srv:
        yield srv


@pytest.mark.slow
def test_a_replayed_train_returns_the_same_job_and_launches_once(service: Server, tiny_model, sample_uris) -> None:
    req = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=4, logging_steps=2)
    key = uuid.uuid4().hex
    with service.client() as c:
        jobs_before = c.get("/jobs").json()["count"]  # the database may hold other tests' jobs
        first = c.post("/train", json=req, headers={HEADER: key})
        assert first.status_code == 202, first.text
        replay = c.post("/train", json=req, headers={HEADER: key})
        assert replay.status_code == 202 and replay.json() == first.json()
        assert replay.headers[REPLAYED_HEADER] == "true"
        # without the key the same job id is refused: the replay above did not try to submit it again
        assert c.post("/train", json=req).status_code == 409
        other = c.post("/train", json={**req, "job_id": f"{req['job_id']}-b"}, headers={HEADER: key})
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"

        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in TERMINAL)
        assert job["status"] == "completed", job
        late = c.post("/train", json=req, headers={HEADER: key})  # after the job ended: still the first answer
        assert late.status_code == 202 and late.json() == first.json()
        assert c.get("/jobs").json()["count"] == jobs_before + 1
        events = c.get(f"/jobs/{req['job_id']}/events").json()["data"]
        statuses = [e["data"].get("status") for e in events if e["type"] == "status"]
        assert statuses.count("running") == 1 and statuses.count("completed") == 1, statuses


@pytest.mark.slow
def test_a_replayed_cancel_answers_as_the_first(service: Server, tiny_model, sample_uris) -> None:
    req = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=100_000)
    key = uuid.uuid4().hex
    with service.client() as c:
        assert c.post("/train", json=req).status_code == 202
        first = c.post(f"/jobs/{req['job_id']}/cancel", headers={HEADER: key})
        assert first.status_code == 200 and first.json()["status"] == "cancelled", first.text
        replay = c.post(f"/jobs/{req['job_id']}/cancel", headers={HEADER: key})
        assert replay.status_code == 200 and replay.json() == first.json()
        assert replay.headers[REPLAYED_HEADER] == "true"
        # the key is the service's: the same key on /train is another request
        assert c.post("/train", json=req, headers={HEADER: key}).status_code == 422
