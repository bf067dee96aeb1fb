"""The HuggingFace trainer service over real HTTP: a uvicorn subprocess, a real database,
file:// storage and real training of the project's tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.utils.factories import random_job_id, training_request
from tests.utils.server import REPO, Server, wait_for

SECRET = "hf_SUPERSECRET_do_not_leak_123"
APP = "services.huggingface.app:app"


@pytest.fixture
def service_env(database_url: str, storage_root: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "TRAINYARD_CANCEL_GRACE_SECONDS": "3",
    }


@pytest.fixture
def service(service_env: dict[str, str], tmp_path: Path):
    with Server(APP, service_env, log_path=tmp_path / "service.log") as srv:
        yield srv


def client(srv: Server) -> httpx.Client:
    return srv.client(timeout=30)


def _assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "status_code"} and body["status_code"] == status
    return body


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lora_job_trains_reports_progress_and_saves_adapter(service, tiny_model, sample_uris, tmp_path) -> None:
    req = training_request(str(tiny_model), sample_uris["sft_train"], validation_uri=sample_uris["sft_validation"],
                           max_steps=40)
    req["base_model"]["huggingface_token"] = SECRET
    with client(service) as c:
        r = c.post("/train", json=req)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] == "pending" and job["id"] == req["job_id"]
        job = wait_for(c, f"/jobs/{job['id']}", lambda j: j["status"] in ("completed", "failed", "cancelled"))
        assert job["status"] == "completed", job
        m = job["metrics"]
        assert m["eval_loss"] < m["eval_loss_before"], m
        assert job["progress"]["step"] == 40 and job["progress"]["percent"] == 100.0
        events = c.get(f"/jobs/{job['id']}/events").json()["data"]
        losses = [e["data"]["progress"]["loss"] for e in events if e["type"] == "progress" and "loss" in e["data"]["progress"]]
        assert len(losses) >= 4, events  # one per logging step (5) over 40 steps
        assert [e["data"]["status"] for e in events if e["type"] == "status" and "status" in e["data"]][-1] == "completed"
        logs = c.get(f"/jobs/{job['id']}/logs", params={"tail": 0}).json()
        assert logs["count"] > 0
        text = "\n".join(logs["logs"])  # what the user must act on only: no harmless library notes, no bars
        assert "[progress]" in text and "gemm_4bit_forward" not in text and "is_gradient_checkpointing" not in text
        assert "\r" not in text and "it/s]" not in text
        everything = json.dumps([job, events, logs, c.get("/jobs").json()])
        assert SECRET not in everything
    assert SECRET not in (tmp_path / "service.log").read_text()

    out = Path(job["output_uri"].removeprefix("file://"))
    assert (out / "adapter_config.json").exists() and (out / "metrics.json").exists()
    # the adapter loads with PEFT onto the base and generates
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    log_copy = Path(job["log_uri"].removeprefix("file://")) / "train.log"
    assert log_copy.exists()


@pytest.mark.slow
def test_cancel_kills_the_whole_process_group_and_restart_keeps_jobs(
    service_env, tiny_model, sample_uris, tmp_path
) -> None:
    srv = Server(APP, service_env, log_path=tmp_path / "service.log").start()
    try:
        with client(srv) as c:
            long = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=100000)
            queued = training_request(str(tiny_model), sample_uris["sft_train"], max_steps=5)
            assert c.post("/train", json=long).status_code == 202
            assert c.post("/train", json=queued).status_code == 202  # one slot: waits behind `long`
            job = wait_for(c, f"/jobs/{long['job_id']}", lambda j: j["progress"].get("step", 0) > 0)
            assert c.get(f"/jobs/{queued['job_id']}").json()["status"] == "pending"
            pgid = int(job["runner_ref"].rsplit(":", 1)[1])
            os.killpg(pgid, 0)  # alive now
            r = c.post(f"/jobs/{long['job_id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("training process group still alive after cancel")
            _assert_error(c.post(f"/jobs/{long['job_id']}/cancel"), 409)
            # the queued job gets the slot; cancel it while pending or running
            c.post(f"/jobs/{queued['job_id']}/cancel")
        srv.stop()
        srv = Server(APP, service_env, log_path=tmp_path / "service.log").start()
        with client(srv) as c:
            listed = {j["id"]: j["status"] for j in c.get("/jobs").json()["data"]}
            assert listed[long["job_id"]] == "cancelled"
            assert long["job_id"] in listed and queued["job_id"] in listed
    finally:
        srv.stop()


def test_bad_inputs_get_enveloped_4xx(service, sample_uris, storage_root) -> None:
    good = training_request("some/model", sample_uris["sft_train"])
    with client(service) as c:
        _assert_error(c.post("/train", json={}), 422)
        _assert_error(c.post("/train", content=b"{not json", headers={"content-type": "application/json"}), 422)
        bad = json.loads(json.dumps(good))
        bad["customization"]["method"] = "magic"
        _assert_error(c.post("/train", json=bad), 422)
        bad = json.loads(json.dumps(good))
        bad["tuning_parameters"]["learning_rate"] = 0
        body = _assert_error(c.post("/train", json=bad), 422)
        assert any("learning_rate" in d["loc"] for d in body["detail"])
        bad = json.loads(json.dumps(good))
        bad["customization"]["rank"] = -1
        _assert_error(c.post("/train", json=bad), 422)
        bad = json.loads(json.dumps(good))
        bad["datasets"] = [{"source": (storage_root / "nope.jsonl").as_uri()}]
        body = _assert_error(c.post("/train", json=bad), 422)
        assert "nope.jsonl" in json.dumps(body["detail"])
        bad["datasets"] = [{"source": "file:///etc/passwd"}]
        assert "datasets[0].source" in json.dumps(_assert_error(c.post("/train", json=bad), 422)["detail"])
        bad["datasets"] = [{"source": f"{storage_root.as_uri()}/../../etc/passwd"}]
        _assert_error(c.post("/train", json=bad), 422)
        bad["datasets"] = [{"source": "http://example.com/x.jsonl"}]
        _assert_error(c.post("/train", json=bad), 422)
        bad = json.loads(json.dumps(good))
        bad["base_model"]["huggingface_token"] = SECRET
        bad["tuning_parameters"]["learning_rate"] = 5
        body = _assert_error(c.post("/train", json=bad), 422)
        assert SECRET not in json.dumps(body)
        _assert_error(c.get("/jobs/does-not-exist"), 404)
        _assert_error(c.post("/jobs/does-not-exist/cancel"), 404)
        _assert_error(c.get("/jobs/x/logs", params={"tail": -1}), 422)
        _assert_error(c.post("/internal/jobs/x/reports", json={"type": "progress"}), 404)  # not on the main port
        _assert_error(httpx.post(f"{service.report_url}/internal/jobs/x/reports", json={"type": "progress"}), 401)
        assert c.post("/train", json=good).status_code == 202
        _assert_error(c.post("/train", json=good), 409)  # same job_id twice


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_runtime_failures_are_recorded_as_failed_jobs(service, tiny_model, storage_root) -> None:
    bad_rows = storage_root / "bad.jsonl"
    bad_rows.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                        "{this is not json\n")
    with client(service) as c:
        req = training_request(str(tiny_model), bad_rows.as_uri())
        assert c.post("/train", json=req).status_code == 202
        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in ("failed", "completed"), timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job
        assert "line 2" in job["error"]["message"]
        missing_model = training_request((storage_root / "no-such-model").as_uri(), bad_rows.as_uri())
        missing_model["job_id"] = random_job_id()
        assert c.post("/train", json=missing_model).status_code == 202
        job = wait_for(c, f"/jobs/{missing_model['job_id']}", lambda j: j["status"] in ("failed", "completed"),
                       timeout=120)
        assert job["status"] == "failed", job


def test_service_process_does_not_import_torch() -> None:
    code = "import sys, services.huggingface.app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_info_and_health(service) -> None:
    with client(service) as c:
        info = c.get("/info").json()
        assert info["backend"] == "huggingface" and "lora" in info["methods"] and info["available"]
        assert c.get("/health").json()["status"] == "healthy"
