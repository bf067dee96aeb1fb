"""Idempotency-Key on the gateway over real HTTP: a replay returns the first response and creates
nothing new; the same key on another request is 422, while the first is in flight 409; keys belong
to their workspace and expire after the TTL. On SQLite (the shared gateway) and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from common.db import make_engine
from common.idempotency import HEADER, MAX_KEY_LENGTH, REPLAYED_HEADER, Claim, IdempotencyStore
from tests.gateway.conftest import INTERNAL_TOKEN, Tenant
from tests.gateway.helpers import SFT_TRAIN, client, err, ok, validated_finetune
from tests.utils.server import Server

TTL_SECONDS = 2


def finetune_body(name: str = "idem") -> dict[str, object]:
    return {"name": name, "provider": "huggingface", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "hyperparameters": {"max_steps": 5}}


def new_key() -> str:
    return uuid.uuid4().hex


def finetune_count(c: httpx.Client) -> int:
    r = c.get("/v1/finetune")
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def test_a_replayed_create_returns_the_first_response_and_creates_nothing(tenant: Tenant) -> None:
    key = new_key()
    with tenant.client() as c:
        first = c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key})
        created = ok(first)
        assert REPLAYED_HEADER.lower() not in first.headers
        assert finetune_count(c) == 1
        # the same body, re-encoded with other key order and spacing, is the same request
        replay = c.post("/v1/finetune", content=b'{"hyperparameters": {"max_steps": 5}, "model": '
                        b'"HuggingFaceTB/SmolLM2-135M-Instruct", "provider": "huggingface", "name": "idem"}',
                        headers={HEADER: key, "content-type": "application/json"})
        assert replay.status_code == first.status_code
        assert replay.json() == first.json() and ok(replay)["id"] == created["id"]
        assert replay.headers[REPLAYED_HEADER] == "true"
        assert replay.headers["content-type"] == first.headers["content-type"]
        assert finetune_count(c) == 1
        # without a key every POST acts
        ok(c.post("/v1/finetune", json=finetune_body()))
        assert finetune_count(c) == 2


def test_the_same_key_on_another_request_is_422(tenant: Tenant) -> None:
    key = new_key()
    with tenant.client() as c:
        ok(c.post("/v1/finetune", json=finetune_body("one"), headers={HEADER: key}))
        body = err(c.post("/v1/finetune", json=finetune_body("two"), headers={HEADER: key}), 422,
                   "idempotency_key_reused")
        assert HEADER in body["detail"]
        # another path is another request too
        err(c.post("/v1/datasets", json={"name": "d.jsonl", "type": "training"}, headers={HEADER: key}), 422)
        assert finetune_count(c) == 1


def test_a_replay_while_the_first_is_in_flight_is_409(tenant: Tenant) -> None:
    """The first request's claim is taken here as a replica would take it, then the replay arrives."""
    key = new_key()
    engine = make_engine(tenant.shared.env["TRAINYARD_DATABASE_URL"])
    try:
        claim = IdempotencyStore(engine, 60).claim(f"workspace:{tenant.workspace}", key, "digest-of-the-first")
        with tenant.client() as c:
            body = err(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key}), 409, "conflict")
            assert "in progress" in body["detail"]
            assert finetune_count(c) == 0
    finally:
        engine.dispose()
    assert isinstance(claim, Claim)


def test_concurrent_requests_with_one_key_create_one_finetune(tenant: Tenant) -> None:
    key = new_key()

    def post(_: int) -> httpx.Response:
        with tenant.client() as c:
            return c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    created = [r for r in responses if r.status_code == 200]
    assert created and {r.json()["data"]["id"] for r in created} == {created[0].json()["data"]["id"]}
    assert sum(REPLAYED_HEADER.lower() not in r.headers for r in created) == 1  # one acted
    for r in responses:
        if r.status_code != 200:
            err(r, 409, "conflict")
    with tenant.client() as c:
        assert finetune_count(c) == 1


def test_keys_belong_to_their_workspace(tenant: Tenant, shared_gateway) -> None:
    from common.schemas import Scope
    from gateway import auth

    engine = make_engine(shared_gateway.env["TRAINYARD_DATABASE_URL"])
    try:
        _, other_key = auth.create_key(engine, name="other", workspace_id=f"ws-{uuid.uuid4().hex[:10]}",
                                       scopes=[Scope.write])
    finally:
        engine.dispose()
    key = new_key()
    with tenant.client() as c, tenant.client(other_key) as other:
        mine = ok(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key}))
        theirs = other.post("/v1/finetune", json=finetune_body(), headers={HEADER: key})
        assert REPLAYED_HEADER.lower() not in theirs.headers
        assert ok(theirs)["id"] != mine["id"]
        assert finetune_count(c) == 1 and finetune_count(other) == 1
        # the other workspace's id is not this workspace's either way
        err(c.get(f"/v1/finetune/{ok(theirs)['id']}"), 404)


def test_a_replayed_upload_creates_one_dataset(tenant: Tenant) -> None:
    """httpx draws a new multipart boundary per request: the retry is still the same request."""
    key = new_key()
    data = SFT_TRAIN.read_bytes()
    with tenant.client() as c:
        first = c.post("/v1/datasets/upload", files={"file": ("train.jsonl", data)}, data={"type": "training"},
                       headers={HEADER: key})
        replay = c.post("/v1/datasets/upload", files={"file": ("train.jsonl", data)}, data={"type": "training"},
                        headers={HEADER: key})
        assert ok(replay)["id"] == ok(first)["id"] and replay.headers[REPLAYED_HEADER] == "true"
        assert c.get("/v1/datasets").json()["count"] == 1
        other = c.post("/v1/datasets/upload", files={"file": ("train.jsonl", data[:-10])},
                       data={"type": "training"}, headers={HEADER: key})
        err(other, 422, "idempotency_key_reused")


def test_a_5xx_is_not_stored_so_a_retry_acts(tenant: Tenant) -> None:
    """The trainer services of the shared gateway are down: start answers 503, and the retry with the
    same key runs again (it is not a replay); a 409 is not stored either."""
    key = new_key()
    with tenant.client() as c:
        finetune_id, _ = validated_finetune(c, "HuggingFaceTB/SmolLM2-135M-Instruct")
        for _ in range(2):
            r = c.post(f"/v1/finetune/{finetune_id}/start", json={}, headers={HEADER: key})
            err(r, 503)
            assert REPLAYED_HEADER.lower() not in r.headers
        fresh = ok(c.post("/v1/finetune", json=finetune_body()))
        start_key = new_key()
        for _ in range(2):  # not validated: 409 each time, acted on each time
            r = c.post(f"/v1/finetune/{fresh['id']}/start", json={}, headers={HEADER: start_key})
            err(r, 409)
            assert REPLAYED_HEADER.lower() not in r.headers


def test_the_key_length_is_capped(tenant: Tenant) -> None:
    with tenant.client() as c:
        err(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: "k" * (MAX_KEY_LENGTH + 1)}), 422,
            "validation_error")
        err(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: ""}), 422, "validation_error")
        assert finetune_count(c) == 0
        ok(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: "k" * MAX_KEY_LENGTH}))


@pytest.fixture
def gateway_env(base_env: dict[str, str]) -> dict[str, str]:
    return {**base_env, "TRAINYARD_IDEMPOTENCY_TTL_SECONDS": str(TTL_SECONDS)}


def test_replay_conflict_and_expiry_on_each_database(gateway: Server, tmp_path: Path) -> None:
    """Through the internal API too (the control plane's workspace header is the scope)."""
    key = new_key()
    with client(gateway) as c:
        before = finetune_count(c)  # the database may hold other tests' finetunes
        first = ok(c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key}))
        replay = c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key})
        assert ok(replay)["id"] == first["id"] and replay.headers[REPLAYED_HEADER] == "true"
        err(c.post("/v1/finetune", json=finetune_body("other"), headers={HEADER: key}), 422)
        cancel_key = new_key()
        cancelled = c.post(f"/v1/finetune/{first['id']}/cancel", headers={HEADER: cancel_key})
        again = c.post(f"/v1/finetune/{first['id']}/cancel", headers={HEADER: cancel_key})
        assert again.status_code == cancelled.status_code and again.json() == cancelled.json()
        assert again.headers[REPLAYED_HEADER] == "true"
        assert finetune_count(c) == before + 1
        time.sleep(TTL_SECONDS + 0.5)
        after = c.post("/v1/finetune", json=finetune_body(), headers={HEADER: key})
        assert REPLAYED_HEADER.lower() not in after.headers
        assert ok(after)["id"] != first["id"]
        assert finetune_count(c) == before + 2
    internal = {"Authorization": f"Bearer {INTERNAL_TOKEN}", "x-workspace-id": f"ws-cp-{uuid.uuid4().hex[:10]}", HEADER: key}
    with client(gateway, None) as c:
        one = ok(c.post("/v1/dataservice/finetune", json=finetune_body(), headers=internal))
        two = c.post("/v1/dataservice/finetune", json=finetune_body(), headers=internal)
        assert ok(two)["id"] == one["id"] and two.headers[REPLAYED_HEADER] == "true"
        assert c.get("/v1/dataservice/finetune", headers=internal).json()["count"] == 1
