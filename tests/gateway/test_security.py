"""The gateway's side of the trust boundaries (docs/security.md), over real HTTP: upload URLs work once
and never reach a log, secret columns hold ciphertext, service URLs are the admin's to see, and a job
someone else created under a finetune's job id is never adopted."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ADMIN_KEY, GATEWAY, HF_SERVICE, Tenant
from tests.gateway.helpers import SFT_TRAIN, TINY_HP, client, err, ok, validated_finetune
from tests.utils.factories import training_request
from tests.utils.server import Server, service_headers

ROWS = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


def test_an_upload_url_works_once_and_no_log_shows_its_signature(tenant: Tenant) -> None:
    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "once.jsonl", "type": "training"}))
        url = created["signed_url"]
        assert "sig=" in url
        ok(httpx.put(url, content=ROWS, timeout=30))
        body = err(httpx.put(url, content=b'{"replaced": true}\n', timeout=30), 403, "signature_used")
        assert "already used" in body["detail"]
        stored = (tenant.storage_root / created["s3_path"]).read_bytes()
        assert stored == ROWS  # the replay replaced nothing
        fresh = ok(c.post(f"/v1/datasets/{created['id']}/signed_url"))["signed_url"]
        ok(httpx.put(fresh, content=ROWS + ROWS, timeout=30))  # a new URL works (once)
    log = tenant.shared.log_path.read_text()
    assert f"/v1/uploads/{created['id']}?<redacted>" in log  # the access log line is there, redacted
    assert "sig=" not in log and url.split("sig=")[1] not in log


def test_signed_urls_are_short_lived_by_default(tenant: Tenant) -> None:
    from datetime import datetime

    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "ttl.jsonl", "type": "training"}))
    expires = datetime.fromisoformat(created["expires_at"])
    assert (expires - datetime.now(expires.tzinfo)).total_seconds() <= 15 * 60


def test_the_virtual_key_is_stored_encrypted(tenant: Tenant) -> None:
    secret = "hf_virtual_key_at_rest_probe_0123"
    with tenant.client() as c:
        finetune_id = ok(c.post("/v1/finetune", json={
            "name": "at rest", "provider": "huggingface", "model": "sshleifer/tiny-gpt2", "virtual_key": secret,
            "hyperparameters": {},
        }))["id"]
    db_path = tenant.shared.env["TRAINYARD_DATABASE_URL"].split("///", 1)[1]
    with sqlite3.connect(db_path) as conn:
        (stored,) = conn.execute("SELECT secrets FROM finetunes WHERE id = ?", (finetune_id,)).fetchone()
    assert secret not in stored and set(json.loads(stored)) == {"fernet"}


def test_service_urls_are_shown_to_the_admin_only(tenant: Tenant) -> None:
    with tenant.client() as c:
        listed = ok(c.get("/v1/services"))
    assert {s["name"] for s in listed} == {"huggingface", "unsloth", "dpo"}
    assert all("url" not in s for s in listed)
    with tenant.client(ADMIN_KEY) as admin:
        assert all(s["url"].startswith("http://") for s in ok(admin.get("/v1/services")))


class SquattingProxy:
    """Stands between the gateway and the trainer service, as an attacker who got to the service first
    would: on ``POST /train`` it first creates a job of its own under the id the gateway chose (``squat``),
    or forwards the gateway's own request twice, like a retry whose first answer was lost (``retry``).
    Everything is forwarded to the real service with the real service token."""

    def __init__(self, service_url: str, mode: str, squatter_request: dict) -> None:
        self.service_url, self.mode, self.squatter = service_url, mode, squatter_request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0)) or None
                headers = {"content-type": "application/json", "authorization": self.headers.get("authorization", "")}
                if method == "POST" and self.path == "/train":
                    sent = json.loads(body)
                    first = {**proxy.squatter, "job_id": sent["job_id"]} if proxy.mode == "squat" else sent
                    httpx.post(f"{proxy.service_url}/train", json=first, headers=service_headers(), timeout=30)
                r = httpx.request(method, f"{proxy.service_url}{self.path}", content=body, headers=headers, timeout=30)
                self.send_response(r.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_created_under_the_finetunes_id_by_someone_else_is_never_adopted(
    base_env, storage_root: Path, tiny_model: Path, tmp_path: Path
) -> None:
    (storage_root / "attacker.jsonl").write_bytes(ROWS * 20)
    squatter = training_request(str(tiny_model), (storage_root / "attacker.jsonl").as_uri(), max_steps=100000)
    squatter["labels"] = {"workspace": "default", "project": "default", "finetune": "ft-guessed"}
    squatter["callbacks"] = {"webhook_url": "http://127.0.0.1:9/attacker"}
    base_env = {**base_env, "TRAINYARD_OUTBOUND_ALLOW": '["127.0.0.0/8"]'}  # the attacker's webhook is local
    with Server(HF_SERVICE, base_env, log_path=tmp_path / "service.log") as svc:
        proxy = SquattingProxy(svc.url, "squat", squatter)
        env = {**base_env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": proxy.url}
        try:
            with Server(GATEWAY, env, log_path=tmp_path / "gw.log") as gw, client(gw) as c:
                finetune_id, _ = validated_finetune(c, str(tiny_model), SFT_TRAIN, **TINY_HP)
                body = err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)
                assert "different job" in body["detail"]
                ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
                assert ft["status"] == "pk_dataset_validation_successfull" and ft["job_id"] is None
                events = ok(c.get(f"/v1/finetune/{finetune_id}/events"))
                assert not any(e["data"].get("status") == "pending" for e in events)
                # a retry of the gateway's own request is adopted: same owner, same digest
                proxy.mode = "retry"
                ft = ok(c.post(f"/v1/finetune/{finetune_id}/start"))
                assert ft["status"] in ("pending", "running")
                assert re.fullmatch(rf"{finetune_id}-\d+-[0-9a-f]{{16}}", ft["job_id"])
                ok(c.post(f"/v1/finetune/{finetune_id}/cancel"))
        finally:
            proxy.close()
            with svc.client() as s:
                for status in ("pending", "running"):
                    for job in s.get("/jobs", params={"status": status}).json()["data"]:
                        s.post(f"/jobs/{job['id']}/cancel")
