"""Storage mistakes are reported where they are made: a gateway or trainer service configured with an S3
bucket that does not exist refuses to start and names the bucket (instead of answering healthy and
failing the first upload), and a file stored as 0 bytes is refused when it is attached or uploaded."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GATEWAY, HF_SERVICE, Tenant
from tests.gateway.helpers import client, err, ok
from tests.gateway.test_flow import s3_env
from tests.s3 import make_bucket
from tests.utils.server import Server

ROW = b'{"text": "hello"}\n'


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("app", [GATEWAY, HF_SERVICE])
def test_a_missing_bucket_stops_the_process_at_start_and_is_named(
    app: str, base_env: dict[str, str], s3_server, tmp_path: Path
) -> None:
    bucket = f"ty-missing-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="exited"):
        Server(app, {**base_env, **s3_env(s3_server.endpoint_url, bucket)}, log_path=log).start()
    text = log.read_text()
    assert f"TRAINYARD_STORAGE_URL=s3://{bucket}/trainyard: bucket '{bucket}' does not exist" in text, text[-3000:]
    assert "create the bucket or fix the setting" in text

    make_bucket(s3_server.endpoint_url, bucket)  # the same settings start once the bucket exists
    with Server(app, {**base_env, **s3_env(s3_server.endpoint_url, bucket)}, log_path=log) as srv:
        assert httpx.get(f"{srv.url}/health").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_empty_s3_upload_is_refused_at_attach(base_env: dict[str, str], s3_server, tmp_path: Path) -> None:
    bucket = make_bucket(s3_server.endpoint_url, f"ty-{uuid.uuid4().hex[:10]}")
    env = {**base_env, **s3_env(s3_server.endpoint_url, bucket)}
    with Server(GATEWAY, env, log_path=tmp_path / "gw.log") as gw, client(gw) as c:
        created = ok(c.post("/v1/datasets", json={"name": "train.jsonl", "type": "training"}))
        assert httpx.put(created["signed_url"], content=b"").status_code == 200  # S3 stores 0 bytes
        body = err(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": created["s3_path"]}), 422, "empty_file")
        assert "is empty (0 bytes)" in body["detail"] and created["s3_path"] in body["detail"]
        assert ok(c.get(f"/v1/datasets/{created['id']}"))["size_bytes"] is None

        assert httpx.put(created["signed_url"], content=ROW).status_code == 200
        assert ok(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": created["s3_path"]}))["size_bytes"] == len(ROW)


def test_an_empty_body_on_the_gateways_upload_url_is_refused_and_the_url_still_works(tenant: Tenant) -> None:
    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "train.jsonl", "type": "training"}))
        for empty in (b"", iter([b""])):  # with a Content-Length of 0, and chunked with no bytes
            body = err(httpx.put(created["signed_url"], content=empty), 422, "empty_file")
            assert "is empty (0 bytes)" in body["detail"]
        assert ok(c.get(f"/v1/datasets/{created['id']}"))["size_bytes"] is None
        ok(httpx.put(created["signed_url"], content=ROW))
        assert ok(c.get(f"/v1/datasets/{created['id']}"))["size_bytes"] == len(ROW)
        # an empty body on a fresh URL leaves the uploaded file as it was
        fresh = ok(c.post(f"/v1/datasets/{created['id']}/signed_url"))["signed_url"]
        err(httpx.put(fresh, content=iter([b""])), 422, "empty_file")
        stored = tenant.storage_root / ok(c.get(f"/v1/datasets/{created['id']}"))["s3_path"]
        assert stored.read_bytes() == ROW
