"""The gateway's request-time refusals over real HTTP: models another workspace owns or the file
system holds, oversized bodies before authentication, out-of-range query integers, a mangled
upload signature, 405s without Allow, a first row nested too deeply. Each was accepted or a 500."""

from __future__ import annotations

import json
import uuid

import httpx

from common.modelrefs import REFUSED
from tests.gateway.conftest import Tenant
from tests.gateway.helpers import create_finetune, err, ok, upload_dataset, validate


def test_models_of_other_workspaces_and_of_the_file_system_are_refused_alike(tenant: Tenant, tiny_model) -> None:
    alice_results = tenant.storage_root / "users" / "alice" / "projects" / "default" / "results" / "ft-0123456789ab-1"
    alice_results.mkdir(parents=True, exist_ok=True)
    (alice_results / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model)}))
    with tenant.client() as c:
        own_unfinished = create_finetune(c, str(tiny_model))
        refs = [str(alice_results), alice_results.as_uri(), str(tenant.storage_root), "/etc", "/etc/passwd",
                "/no/such/path", "~/models", "file:///etc", "s3://bucket/users/alice/results/x", "../var/models",
                "ft-0123456789ab", f"ft-{uuid.uuid4().hex[:12]}", own_unfinished]
        details = set()
        for ref in refs:
            body = err(c.post("/v1/finetune", json={"name": "x", "provider": "huggingface", "model": ref}), 422)
            details.add(json.dumps(body["detail"]))
            body = err(c.post("/v1/datasets", json={"name": "d.jsonl", "model": ref}), 422)
            details.add(json.dumps(body["detail"]))
        assert details == {json.dumps(f"model: {REFUSED}")}  # one text: nothing about what exists
        # what the rule allows still works
        create_finetune(c, "HuggingFaceTB/SmolLM2-135M-Instruct")
        create_finetune(c, str(tiny_model))


def test_a_refused_override_model_is_refused_at_start(tenant: Tenant, tiny_model) -> None:
    with tenant.client() as c:
        ds = upload_dataset(c, b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        assert validate(c, finetune_id)["status"] == "pk_dataset_validation_successfull"
        body = err(c.post(f"/v1/finetune/{finetune_id}/start", json={"override_model": "/etc"}), 422)
        assert body["detail"] == f"override_model: {REFUSED}"
        assert ok(c.get(f"/v1/finetune/{finetune_id}"))["status"] == "pk_dataset_validation_successfull"


def test_bodies_over_the_cap_are_refused_before_authentication(tenant: Tenant) -> None:
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = httpx.post(f"{tenant.url}/v1/finetune", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert "TRAINYARD_MAX_REQUEST_BYTES" in err(r, 413, "payload_too_large")["detail"]
    with tenant.client() as c:
        hp = {"target_modules": [f"m{i}" for i in range(1000)]}
        body = err(c.post("/v1/finetune", json={"name": "x", "provider": "huggingface", "model": "org/m",
                                                "hyperparameters": hp}), 422)
        assert "target_modules" in json.dumps(body["detail"])


def test_huge_query_integers_are_422_not_500(tenant: Tenant, tiny_model) -> None:
    with tenant.client() as c:
        finetune_id = create_finetune(c, str(tiny_model))
        for path in ("/v1/datasets?offset=9223372036854775808", "/v1/finetune?offset=9223372036854775808",
                     f"/v1/finetune/{finetune_id}/events?after=9223372036854775808",
                     f"/v1/finetune/{finetune_id}/events?after=18446744073709551616"):
            err(c.get(path), 422)
        assert c.get("/v1/finetune").status_code == 200  # the connection and the process survived


def test_a_mangled_upload_signature_is_403_not_500(tenant: Tenant) -> None:
    with tenant.client() as c:
        created = ok(c.post("/v1/datasets", json={"name": "d.jsonl"}))
    for sig in ("%C2%BB", "%FF", "\u00bb" * 64):
        r = httpx.put(f"{tenant.url}/v1/uploads/{created['id']}?expires=9999999999&sig={sig}", content=b"{}\n")
        err(r, 403, "invalid_signature")


def test_a_405_lists_the_methods_of_its_path(tenant: Tenant) -> None:
    r = httpx.options(f"{tenant.url}/v1/finetune")
    err(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"
    r = httpx.request("PATCH", f"{tenant.url}/v1/datasets/ds-x")
    err(r, 405)
    assert r.headers["allow"] == "GET, PUT, DELETE"


def test_a_first_row_nested_too_deeply_fails_validation_naming_the_line(tenant: Tenant, tiny_model) -> None:
    with tenant.client() as c:
        ds = upload_dataset(c, b"[" * 5000 + b"]" * 5000 + b"\n")
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        data = validate(c, finetune_id)
    assert data["status"] == "pk_dataset_validation_failed", data
    report = data["validation"]["training"]
    assert data["validation"]["error"] is None and report["errors"][0]["line"] == 1, data["validation"]
    assert "nested too deeply" in report["errors"][0]["message"]
