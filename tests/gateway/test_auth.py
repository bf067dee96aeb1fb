"""API keys: header forms, 401/403, scopes, workspace isolation, the CLI, and that keys are stored
only as hashes and never logged. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import text

from common.db import make_engine
from common.schemas import Scope
from gateway import auth
from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.helpers import SFT_TRAIN, client, create_finetune, err, ok, upload_dataset
from tests.utils.server import REPO, Server


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", "keys", *args], cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )


def test_scopes_and_workspace_isolation(gateway: Server, gateway_env: dict[str, str], tmp_path: Path) -> None:
    key_r = cli(gateway_env, "create", "--workspace", "team-a", "--name", "reader-a",
                "--scope", "completions.read").stdout.strip()
    engine = make_engine(gateway_env["TRAINYARD_DATABASE_URL"])  # the same code path as the CLI, in-process
    _, key_a = auth.create_key(engine, name="writer-a", workspace_id="team-a", scopes=[Scope.write])
    _, key_b = auth.create_key(engine, name="writer-b", workspace_id="team-b", scopes=[Scope.write])
    assert key_r.startswith("ty_") and len({key_a, key_r, key_b}) == 3

    with client(gateway, key_a) as a, client(gateway, key_r) as r, client(gateway, key_b) as b, \
            client(gateway, None) as anon:
        ds = upload_dataset(a, SFT_TRAIN)
        assert ds["workspace_id"] == "team-a" and ds["s3_path"].startswith("users/team-a/projects/default/")
        finetune_id = create_finetune(a, "some/model")

        # 401: no key, an unknown key, a malformed header
        for resp in (anon.get("/v1/datasets"), anon.post("/v1/finetune", json={}),
                     httpx.get(f"{gateway.url}/v1/datasets", headers={"x-portkey-api-key": "ty_unknown"}),
                     httpx.get(f"{gateway.url}/v1/datasets", headers={"Authorization": "Basic abc"})):
            body = err(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer" and "key" in body["detail"]
        # Authorization: Bearer works like x-portkey-api-key
        assert ok(httpx.get(f"{gateway.url}/v1/datasets", headers={"Authorization": f"Bearer {key_a}"}))[0]["id"] == ds["id"]

        # 403: a read-only key reads but cannot write
        assert ok(r.get(f"/v1/finetune/{finetune_id}"))["id"] == finetune_id
        assert [d["id"] for d in ok(r.get("/v1/datasets"))] == [ds["id"]]
        for resp in (r.post("/v1/datasets", json={"name": "x.jsonl"}),
                     r.post("/v1/finetune", json={"name": "x", "provider": "huggingface", "model": "m"}),
                     r.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}),
                     r.post(f"/v1/finetune/{finetune_id}/validation/start"),
                     r.post(f"/v1/finetune/{finetune_id}/start"), r.post(f"/v1/finetune/{finetune_id}/cancel"),
                     r.delete(f"/v1/datasets/{ds['id']}")):
            assert "completions.write" in err(resp, 403, "forbidden")["detail"]

        # another workspace sees none of it: 404 as if it did not exist, and empty lists
        for resp in (b.get(f"/v1/datasets/{ds['id']}"), b.put(f"/v1/datasets/{ds['id']}", json={"s3_path": ds["s3_path"]}),
                     b.delete(f"/v1/datasets/{ds['id']}"), b.get(f"/v1/finetune/{finetune_id}"),
                     b.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}),
                     b.post(f"/v1/finetune/{finetune_id}/validation/start"),
                     b.post(f"/v1/finetune/{finetune_id}/start"), b.post(f"/v1/finetune/{finetune_id}/cancel"),
                     b.get(f"/v1/finetune/{finetune_id}/events")):
            err(resp, 404, "not_found")
        assert b.get("/v1/datasets").json() == {"success": True, "data": [], "count": 0}
        assert ok(b.get("/v1/finetune")) == []
        # nor can it attach team-a's dataset or object to its own finetune / dataset
        own = create_finetune(b, "some/model")
        assert "not found" in err(b.put(f"/v1/finetune/{own}", json={"training_dataset_id": ds["id"]}), 422)["detail"]
        mine = ok(b.post("/v1/datasets", json={"name": "b.jsonl"}))
        err(b.put(f"/v1/datasets/{mine['id']}", json={"s3_path": ds["s3_path"]}), 400)

        # the admin key seeded from TRAINYARD_ADMIN_API_KEY lives in the 'default' workspace
        with client(gateway, ADMIN_KEY) as admin:
            err(admin.get(f"/v1/datasets/{ds['id']}"), 404)

        # revoking a key takes effect at once
        listed = [json.loads(line) for line in cli(gateway_env, "list", "--json").stdout.splitlines()]
        assert {"admin": "default", "writer-a": "team-a", "reader-a": "team-a", "writer-b": "team-b"}.items() <= {
            k["name"]: k["workspace_id"] for k in listed}.items()
        assert next(k for k in listed if k["name"] == "reader-a")["scopes"] == ["completions.read"]
        key_b_id = next(k["id"] for k in listed if k["name"] == "writer-b")
        cli(gateway_env, "revoke", key_b_id)
        err(b.get("/v1/finetune"), 401)
        assert next(k for k in auth.list_keys(engine) if k.id == key_b_id).revoked_at is not None

    # keys are stored as SHA-256 hashes only, and never logged
    with engine.connect() as conn:
        stored = " ".join(str(row) for row in conn.execute(text("SELECT * FROM api_keys")))
    engine.dispose()
    logs = (tmp_path / "gateway.log").read_text()
    for key in (key_a, key_r, key_b, ADMIN_KEY):
        assert key not in stored and key not in logs
