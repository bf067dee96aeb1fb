"""A trainer service's trust boundaries over real HTTP (docs/security.md): only the gateway's service
token opens its routes, jobs report on a port of their own, and a job's secrets live neither in its
processes' environment nor in clear in the database."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.utils.factories import training_request
from tests.utils.server import SERVICE_TOKEN, Server, wait_for

APP = "services.huggingface.app:app"
SECRET = "hf_SUPERSECRET_environ_probe_42"
WEBHOOK_SECRET = "Bearer webhook-secret-probe-42"


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "status_code"} and body["status_code"] == status
    return body


@pytest.fixture
def service_env(database_url: str, storage_root: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "TRAINYARD_CANCEL_GRACE_SECONDS": "3",
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_route_but_health_takes_the_service_token(service_env, tiny_model, sample_uris, tmp_path) -> None:
    with Server(APP, service_env, log_path=tmp_path / "service.log") as srv:
        req = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=100000)
        with srv.client() as gw:  # the gateway's credential: a job to aim at
            created = gw.post("/train", json=req)
            assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        calls = [
            ("GET", "/jobs", None), ("GET", f"/jobs/{job_id}", None), ("GET", f"/jobs/{job_id}/logs", None),
            ("GET", f"/jobs/{job_id}/events", None), ("POST", f"/jobs/{job_id}/cancel", None), ("GET", "/info", None),
            ("POST", "/train", training_request(str(tiny_model), sample_uris["sft_train"])),
        ]
        for token in (None, "wrong-token-0123456789abcdef", SERVICE_TOKEN[:-1]):
            with srv.client(token) as anyone:
                for method, path, body in calls:
                    _error(anyone.request(method, path, json=body), 401)
        with srv.client(None) as anyone:
            _error(anyone.get("/jobs", headers={"Authorization": f"Basic {SERVICE_TOKEN}"}), 401)
            assert anyone.get("/health").status_code == 200
        with srv.client() as gw:  # nothing above acted: the job is still there, not cancelled
            job = gw.get(f"/jobs/{job_id}").json()
            assert job["status"] != "cancelled"
            assert [j["id"] for j in gw.get("/jobs").json()["data"]] == [job_id]
            # reports are not served on the main port, and the main port's token opens nothing there
            _error(gw.post(f"/internal/jobs/{job_id}/reports", json={"type": "progress"}), 404)
        with httpx.Client(base_url=srv.report_url, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as job_side:
            assert job_side.get("/health").status_code == 200
            _error(job_side.post(f"/internal/jobs/{job_id}/reports", json={"type": "progress"}), 401)
            for path in ("/jobs", f"/jobs/{job_id}"):
                _error(job_side.get(path), 404)  # the job-facing port serves reports only
            _error(job_side.post(f"/jobs/{job_id}/cancel"), 404)
        with srv.client() as gw:
            assert gw.post(f"/jobs/{job_id}/cancel").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_service_without_a_token_refuses_to_start_unless_in_dev_mode(service_env, tmp_path) -> None:
    log = tmp_path / "service.log"
    for token in ("", "short"):
        with pytest.raises(RuntimeError, match="exited"):
            Server(APP, {**service_env, "TRAINYARD_SERVICE_TOKEN": token}, log_path=log).start()
    assert "TRAINYARD_SERVICE_TOKEN is not set" in log.read_text()
    assert "shorter than 16" in log.read_text()
    dev = {**service_env, "TRAINYARD_SERVICE_TOKEN": "", "TRAINYARD_DEV_MODE": "1"}
    with Server(APP, dev, log_path=tmp_path / "dev.log") as srv, srv.client(None) as anyone:
        assert anyone.get("/jobs").status_code == 200
    assert "accepts requests from ANY caller" in (tmp_path / "dev.log").read_text()


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_job_secrets_reach_the_job_through_a_removed_file_not_its_environment(
    service_env, tiny_model, sample_uris, tmp_path
) -> None:
    req = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=100000)
    req["base_model"]["huggingface_token"] = SECRET
    req["callbacks"] = {"webhook_url": "http://127.0.0.1:9/hook", "auth_header": WEBHOOK_SECRET}
    env = {**service_env, "TRAINYARD_ADMIN_API_KEY": "an-admin-key-the-service-must-not-pass-on",
           "TRAINYARD_OUTBOUND_ALLOW": '["127.0.0.0/8"]'}  # the webhook receiver is local
    with Server(APP, env, log_path=tmp_path / "service.log") as srv, srv.client() as c:
        assert c.post("/train", json=req).status_code == 202
        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["progress"].get("step", 0) > 0)
        pgid = int(job["runner_ref"].rsplit(":", 1)[1])
        pids = _group_pids(pgid)
        assert len(pids) >= 2  # the sh wrapper and the training program at least
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            for secret in (SECRET, WEBHOOK_SECRET, SERVICE_TOKEN, "an-admin-key", "TRAINYARD_SECRET_KEYS"):
                assert secret not in environ, f"{secret!r} in the environment of pid {pid}"
            assert "TRAINYARD_JOB_SECRETS_FILE" in environ
        secrets_file = Path(service_env["TRAINYARD_LOG_DIR"]) / f"{req['job_id']}.secrets.json"
        assert not secrets_file.exists()  # read and removed at start
        # the job got its token: it reports progress (checked above), and its log holds no secret
        assert SECRET not in "\n".join(c.get(f"/jobs/{req['job_id']}/logs", params={"tail": 0}).json()["logs"])
        c.post(f"/jobs/{req['job_id']}/cancel")
        db_path = service_env["TRAINYARD_DATABASE_URL"].split("///", 1)[1]
        with sqlite3.connect(db_path) as conn:
            (stored,) = conn.execute("SELECT secrets FROM jobs WHERE id = ?", (req["job_id"],)).fetchone()
        assert SECRET not in stored and WEBHOOK_SECRET not in stored
        assert set(json.loads(stored)) == {"fernet"}
        deadline = time.monotonic() + 15
        while _group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
