"""Uploads: the gateway's HMAC-signed URL (tampering, expiry, size limit), the direct multipart
upload, and which objects a workspace may attach. moto ignores S3 signatures (stack notes), so the
refusals are tested on the gateway's own URLs."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from gateway.signing import sign
from tests.gateway.conftest import SHARED_MAX_UPLOAD_BYTES, SIGNING_SECRET, Tenant
from tests.gateway.helpers import SFT_TRAIN, err, ok


def _with_query(url: str, **changes: str | int) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {k: str(v) for k, v in changes.items()}
    return parts._replace(query=urlencode(query)).geturl()


def test_signed_upload_url_refuses_tampered_expired_and_oversized_uploads(tenant: Tenant) -> None:
    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "train.jsonl"}))
        other = ok(c.post("/v1/datasets", json={"name": "other.jsonl"}))
        url = created["signed_url"]
        assert url.startswith(f"{tenant.url}/v1/uploads/{created['id']}?")
        target = tenant.storage_root / created["s3_path"]
        data = SFT_TRAIN.read_bytes()
        assert len(data) < SHARED_MAX_UPLOAD_BYTES

        query = parse_qs(urlsplit(url).query)
        expires, sig, nonce = int(query["expires"][0]), query["sig"][0], query["nonce"][0]
        tampered_sig = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        err(httpx.put(_with_query(url, sig=tampered_sig), content=data), 403, "invalid_signature")
        err(httpx.put(_with_query(url, expires=expires + 3600), content=data), 403, "invalid_signature")
        err(httpx.put(url.replace(created["id"], other["id"]), content=data), 403, "invalid_signature")
        err(httpx.put(_with_query(url, sig=""), content=data), 403, "invalid_signature")
        err(httpx.put(_with_query(url, nonce="0" * 16), content=data), 403, "invalid_signature")
        # correctly signed, but in the past: expired
        past = int(time.time()) - 10
        expired = _with_query(url, expires=past,
                              sig=sign(SIGNING_SECRET.encode(), created["id"], created["s3_path"], past, nonce))
        err(httpx.put(expired, content=data), 403, "signature_expired")
        # over the size limit, announced or streamed without a length: nothing is stored
        err(httpx.put(url, content=b"x" * 60000), 413, "payload_too_large")
        err(httpx.put(url, content=iter([b"x" * 30000, b"y" * 30000])), 413, "payload_too_large")
        assert not target.exists() and not [f for f in (tenant.storage_root / "users" / tenant.workspace).rglob("*") if f.is_file()]
        assert ok(c.get(f"/v1/datasets/{created['id']}"))["status"] == "awaiting_upload"

        ds = ok(httpx.put(url, content=iter([data[:1000], data[1000:]])))
        assert ds["status"] == "uploaded" and ds["size_bytes"] == len(data) and ds["s3_path"] == created["s3_path"]
        assert target.read_bytes() == data
        # a fresh URL for the same dataset works as well
        renewed = ok(c.post(f"/v1/datasets/{created['id']}/signed_url"))
        assert renewed["s3_path"] == created["s3_path"]
        ok(httpx.put(renewed["signed_url"], content=data))
        err(httpx.put(f"{tenant.url}/v1/uploads/ds-missing?expires={expires}&sig={sig}", content=data), 403)


def test_direct_multipart_upload_has_a_size_limit(tenant: Tenant) -> None:
    with tenant.client() as c:
        data = SFT_TRAIN.read_bytes()
        ds = ok(c.post("/v1/datasets/upload", files={"file": ("my train.jsonl", data)},
                       data={"type": "training", "project_id": "p2"}))
        assert ds["name"] == "my train.jsonl" and ds["status"] == "uploaded" and ds["size_bytes"] == len(data)
        assert ds["s3_path"] == f"users/{tenant.workspace}/projects/p2/ingestion/{ds['id']}-my-train.jsonl"
        assert (tenant.storage_root / ds["s3_path"]).read_bytes() == data
        err(c.post("/v1/datasets/upload", files={"file": ("big.jsonl", b"x" * 200_000)}), 413)
        err(c.post("/v1/datasets/upload", files={"file": ("t.jsonl", data)}, data={"type": "nope"}), 422)
        err(c.post("/v1/datasets/upload", data={"type": "training"}), 400)
        listed = ok(c.get("/v1/datasets"))
        assert [d["id"] for d in listed] == [ds["id"]]  # refused uploads leave no dataset behind


def test_attach_accepts_only_the_workspaces_own_objects(tenant: Tenant) -> None:
    ws, root = tenant.workspace, tenant.storage_root
    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "a.jsonl"}))
        mine = root / "users" / ws / "own" / "file.jsonl"
        mine.parent.mkdir(parents=True)
        mine.write_bytes(SFT_TRAIN.read_bytes())
        foreign = root / "users" / f"{ws}-other" / "x.jsonl"
        foreign.parent.mkdir(parents=True)
        foreign.write_bytes(b"{}\n")
        own_key = f"users/{ws}/own/file.jsonl"
        ds = ok(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": own_key}))
        assert ds["uri"] == mine.as_uri() and ds["size_bytes"] == mine.stat().st_size
        ds = ok(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": mine.as_uri()}))  # a full URI works too
        assert ds["s3_path"] == own_key
        for bad in (f"users/{ws}-other/x.jsonl", foreign.as_uri(), f"users/{ws}/../{ws}-other/x.jsonl",
                    "file:///etc/passwd", f"s3://other-bucket/users/{ws}/x.jsonl", "/etc/passwd"):
            body = err(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": bad}), 400)
            assert f"users/{ws}/" in body["detail"] or "storage base" in body["detail"] or ".." in body["detail"]
        body = err(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": f"users/{ws}/missing.jsonl"}), 422)
        assert "missing.jsonl" in body["detail"]
        err(c.put("/v1/datasets/ds-nope", json={"s3_path": own_key}), 404)
        err(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": own_key, "x": 1}), 422)
