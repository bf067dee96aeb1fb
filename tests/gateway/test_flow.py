"""The whole contract flow through the gateway on S3 (moto's server, S3's presigned PUT), with real
training of the tiny model, a queued finetune cancelled, a re-run after a reset, and a gateway
restart while the job trains."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from tests.gateway.conftest import GATEWAY, HF_SERVICE, Tenant
from tests.gateway.helpers import (
    SFT_TRAIN,
    SFT_VALIDATION,
    TERMINAL,
    TINY_HP,
    client,
    create_finetune,
    err,
    ok,
    validate,
    wait_finetune,
)
from tests.s3 import DUMMY_KEY_ID, DUMMY_SECRET, make_bucket
from tests.utils.server import Server, service_headers


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "TRAINYARD_STORAGE_URL": f"s3://{bucket}/trainyard",
        "TRAINYARD_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_full_flow_on_s3_with_cancel_rerun_and_a_gateway_restart(
    base_env, s3_server, tiny_model: Path, tmp_path: Path
) -> None:
    bucket = make_bucket(s3_server.endpoint_url, f"ty-{uuid.uuid4().hex[:10]}")
    env = {**base_env, **s3_env(s3_server.endpoint_url, bucket)}
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                      aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)
    svc = Server(HF_SERVICE, env, log_path=tmp_path / "service.log").start()
    gw_env = {**env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": svc.url}
    gw = Server(GATEWAY, gw_env, log_path=tmp_path / "gw.log").start()
    try:
        with client(gw) as c:
            # 1. datasets: a presigned S3 PUT each, then attach the key
            ids = {}
            for kind, path in (("training", SFT_TRAIN), ("validation", SFT_VALIDATION)):
                created = ok(c.post("/v1/datasets", json={"name": f"reverse {kind}.jsonl", "provider": "huggingface",
                                                          "model": str(tiny_model), "type": kind}))
                assert created["signed_url"].startswith(f"{s3_server.endpoint_url}/{bucket}/trainyard/users/default/")
                assert "X-Amz-Signature=" in created["signed_url"]
                assert created["s3_path"] == (
                    f"users/default/projects/default/ingestion/{created['id']}-reverse-{kind}.jsonl"
                )
                assert httpx.put(created["signed_url"], content=path.read_bytes()).status_code == 200
                ds = ok(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": created["s3_path"]}))
                assert ds["status"] == "uploaded" and ds["size_bytes"] == path.stat().st_size
                assert ds["uri"] == f"s3://{bucket}/trainyard/{created['s3_path']}"
                ids[kind] = created["id"]
            attach = {"training_dataset_id": ids["training"], "validation_dataset_id": ids["validation"]}

            # 2. finetune: create, start too early, attach, validate
            finetune_id = ok(c.post("/v1/finetune", json={
                "name": "reverse words", "virtual_key": "hf_secret_virtual_key_123", "provider": "huggingface",
                "model": str(tiny_model), "project_id": "proj1", "hyperparameters": {**TINY_HP, "epochs": 1},
            }))["id"]
            body = err(c.post(f"/v1/finetune/{finetune_id}/start"), 409, "conflict")
            assert "validation/start" in body["detail"]
            err(c.post(f"/v1/finetune/{finetune_id}/validation/start"), 409)  # no dataset attached yet
            ft = ok(c.put(f"/v1/finetune/{finetune_id}", json=attach))
            assert ft["status"] == "created" and ft["training_dataset_id"] == ids["training"]
            ft = validate(c, finetune_id)
            assert ft["status"] == "pk_dataset_validation_successfull", ft
            report = ft["validation"]["training"]
            assert report["valid"] and report["rows"] == 320 and report["format"] == "messages"
            assert report["tokens"]["tokenizer"] == str(tiny_model) and 0 < report["tokens"]["max"] <= 128
            assert ft["validation"]["validation"]["rows"] == 40
            ds = ok(c.get(f"/v1/datasets/{ids['training']}"))
            assert ds["rows"] == 320 and ds["validation_status"] == "pk_dataset_validation_successfull"

            # 3. start: the job runs on the HuggingFace service; its datasets are now in use
            ft = ok(c.post(f"/v1/finetune/{finetune_id}/start", json={}))
            job_id = ft["job_id"]  # <finetune>-<attempt>-<random>: nobody can create it first
            assert ft["status"] in ("pending", "running") and re.fullmatch(rf"{finetune_id}-1-[0-9a-f]{{16}}", job_id)
            err(c.delete(f"/v1/datasets/{ids['training']}"), 409)
            err(c.put(f"/v1/finetune/{finetune_id}", json=attach), 409)
            err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)

            # a second finetune queues behind it (one training slot) and is cancelled through the service
            other = create_finetune(c, str(tiny_model), **TINY_HP)
            ok(c.put(f"/v1/finetune/{other}", json=attach))
            assert validate(c, other)["status"] == "pk_dataset_validation_successfull"
            other_job = ok(c.post(f"/v1/finetune/{other}/start"))["job_id"]
            assert ok(c.post(f"/v1/finetune/{other}/cancel"))["status"] == "cancelled"
            assert httpx.get(f"{svc.url}/jobs/{other_job}", headers=service_headers()).json()["status"] == "cancelled"
            err(c.post(f"/v1/finetune/{other}/cancel"), 409)

        # 4. the gateway restarts while the job trains; the new process mirrors it from the database
        gw.stop()
        gw = Server(GATEWAY, gw_env, log_path=tmp_path / "gw.log").start()
        with client(gw) as c:
            ft = wait_finetune(c, finetune_id, lambda f: f["status"] in TERMINAL, timeout=180)
            assert ft["status"] == "completed", ft
            assert ft["progress"]["step"] == 12 and ft["progress"]["percent"] == 100.0
            assert ft["progress"]["loss"] > 0 and ft["started_at"] and ft["finished_at"]
            assert ft["metrics"]["eval_loss"] > 0 and ft["metrics"]["eval_loss_before"] > 0
            assert ft["output_uri"] == f"s3://{bucket}/trainyard/users/default/projects/proj1/results/{job_id}"
            assert ft["log_uri"] == f"s3://{bucket}/trainyard/users/default/projects/proj1/logs/{job_id}"
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"trainyard/users/default/projects/proj1/results/{job_id}/")
            assert f"trainyard/users/default/projects/proj1/results/{job_id}/adapter_config.json" in {
                o["Key"] for o in listing["Contents"]}

            # the trainer got the request the gateway built: labels, mapped hyperparameters
            job = httpx.get(f"{svc.url}/jobs/{job_id}", headers=service_headers()).json()
            assert job["labels"] == {"workspace": "default", "project": "proj1", "finetune": finetune_id}
            assert job["request"]["customization"]["rank"] == 8
            assert job["request"]["tuning_parameters"]["max_steps"] == 12
            assert job["request"]["tuning_parameters"]["num_epochs"] == 1
            assert [d["source"] for d in job["request"]["datasets"]] == [
                f"s3://{bucket}/trainyard/users/default/projects/default/ingestion/{ids[k]}-reverse-{k}.jsonl"
                for k in ("training", "validation")
            ]
            events = ok(c.get(f"/v1/finetune/{finetune_id}/events"))
            statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
            assert statuses[:5] == ["created", "created", "pk_dataset_validation_in_progress",
                                    "pk_dataset_validation_successfull", "pending"]
            assert statuses[-1] == "completed"
            assert ok(c.get(f"/v1/finetune/{finetune_id}/logs", params={"tail": 5}))["count"] > 0
            assert "hf_secret_virtual_key_123" not in c.get(f"/v1/finetune/{finetune_id}").text

            # 5. a PUT resets a finished finetune; validated again, it runs as a new job
            ft = ok(c.put(f"/v1/finetune/{other}", json=attach))
            assert ft["status"] == "created" and ft["job_id"] is None and ft["progress"]["step"] == 0
            assert validate(c, other)["status"] == "pk_dataset_validation_successfull"
            ft = ok(c.post(f"/v1/finetune/{other}/start", json={"override_model": str(tiny_model)}))
            assert ft["job_id"].startswith(f"{other}-2-") and ft["override_model"] == str(tiny_model)
            assert ok(c.post(f"/v1/finetune/{other}/cancel"))["status"] == "cancelled"
            assert [f["id"] for f in ok(c.get("/v1/finetune", params={"status": "cancelled"}))] == [other]

            # 6. a finished finetune frees its datasets: delete removes the uploaded object too
            ok(c.delete(f"/v1/datasets/{ids['training']}"))
            err(c.get(f"/v1/datasets/{ids['training']}"), 404)
            left = s3.list_objects_v2(Bucket=bucket, Prefix="trainyard/users/default/projects/default/ingestion/")
            assert [o["Key"] for o in left["Contents"]] == [
                f"trainyard/users/default/projects/default/ingestion/{ids['validation']}-reverse-validation.jsonl"
            ]
    finally:
        gw.stop()
        svc.stop()
    assert "hf_secret_virtual_key_123" not in (tmp_path / "gw.log").read_text()


def test_a_finetune_abandoned_before_training_is_cancelled_without_a_job(tenant: Tenant, tiny_model: Path) -> None:
    with tenant.client() as c:
        finetune_id = create_finetune(c, str(tiny_model))
        ft = ok(c.post(f"/v1/finetune/{finetune_id}/cancel"))
        assert ft["status"] == "cancelled" and ft["job_id"] is None and ft["finished_at"]
        err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)
