"""The Unsloth trainer service over real HTTP. Its jobs run in the Unsloth environment
(``.venv-unsloth``, built by ``make install``), where unsloth trains text LoRA on the CPU, so the
job here is a real Unsloth fine-tune of the project's tiny model, not a stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.unsloth.backend import UNSLOTH_VENV
from tests.gateway.conftest import GATEWAY, gateway_settings
from tests.gateway.helpers import client as gateway_client
from tests.gateway.helpers import ok
from tests.utils.factories import place_samples, training_request
from tests.utils.server import REPO, Server, wait_for

APP = "services.unsloth.app:app"
TERMINAL = ("completed", "failed", "cancelled")
UNSLOTH_PYTHON = UNSLOTH_VENV / "bin" / "python"
needs_unsloth_env = pytest.mark.skipif(
    not UNSLOTH_PYTHON.exists(), reason=f"{UNSLOTH_PYTHON} is missing: `make unsloth-env` (part of `make install`) builds it"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("unsloth")
    root = tmp / "objects"
    uris = place_samples(root)
    env = {
        "TRAINYARD_DATABASE_URL": f"sqlite:///{tmp / 'trainyard.db'}",
        "TRAINYARD_STORAGE_ROOT": str(root),
        "TRAINYARD_LOG_DIR": str(tmp / "logs"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        # the project's models (the tiny model) and this module's hand-made ones
        "TRAINYARD_MODEL_DIRS": json.dumps([str(REPO / "var" / "models"), str(tmp / "models")]),
    }
    return {"tmp": tmp, "root": root, "uris": uris, "env": env}


@pytest.fixture(scope="module")
def service(store: dict) -> Iterator[Server]:
    """The service as `make up` starts it: no TRAINYARD_PYTHON_EXECUTABLE, so jobs use .venv-unsloth."""
    env = {k: v for k, v in store["env"].items()}
    with Server(APP, env, log_path=store["tmp"] / "unsloth.log") as srv:
        with client(srv) as c:
            wait_for(c, "/info", lambda i: i["status"] != "starting", timeout=240)
        yield srv


def client(srv: Server) -> httpx.Client:
    return srv.client(timeout=60)


@needs_unsloth_env
def test_info_says_available_with_the_unsloth_environment(service: Server) -> None:
    with client(service) as c:
        info = c.get("/info").json()
    assert info["backend"] == "unsloth" and info["available"], info
    assert info["training_types"] == ["sft"] and set(info["methods"]) == {"lora", "qlora", "full"}


@needs_unsloth_env
@pytest.mark.slow
def test_unsloth_lora_job_learns_and_saves_a_loadable_adapter(service: Server, store: dict, tiny_model: Path) -> None:
    uris = store["uris"]
    req = training_request(str(tiny_model), uris["sft_train"], validation_uri=uris["sft_validation"],
                           max_steps=20, learning_rate=5e-3)
    req["tuning_parameters"]["gradient_checkpointing"] = True  # use_gradient_checkpointing="unsloth"
    with client(service) as c:
        r = c.post("/train", json=req)
        assert r.status_code == 202, r.text
        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in TERMINAL, timeout=300)
        logs = "\n".join(c.get(f"/jobs/{req['job_id']}/logs", params={"tail": 0}).json()["logs"])
    assert job["status"] == "completed", (job, logs[-3000:])
    m = job["metrics"]
    assert m["trainer"] == "unsloth" and m["steps"] == 20
    assert m["eval_loss"] < m["eval_loss_before"], m
    assert "Unsloth" in logs and ".venv-unsloth" in logs  # trained by unsloth, in its own environment
    assert job["progress"]["step"] == 20

    out = Path(job["output_uri"].removeprefix("file://"))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model) and adapter["r"] == 8
    # The adapter loads with plain PEFT in the main environment (no unsloth) and generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    ids = tok.apply_chat_template([{"role": "user", "content": "reverse: cat dog"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


@needs_unsloth_env
def test_refuses_an_unsupported_family_and_other_problems_in_one_body(service: Server, store: dict) -> None:
    gpt2 = store["tmp"] / "models" / "gpt2-like"
    gpt2.mkdir(parents=True, exist_ok=True)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    req = training_request(str(gpt2), store["uris"]["dpo_train"])
    req["customization"]["trainable_layers"] = ["layers.0"]
    req["customization"]["peft"] = {"config": {"fan_in_fan_out": True}}
    with client(service) as c:
        r = c.post("/train", json=req)
    assert r.status_code == 422, r.text
    detail = " | ".join(r.json()["detail"])
    assert "model family 'gpt2' is not supported by the unsloth backend (supported: llama, mistral" in detail
    assert "this is DPO data, but this backend trains SFT" in detail
    assert "trainable_layers is not supported" in detail and "fan_in_fan_out" in detail


def test_unavailable_when_unsloth_does_not_load_where_jobs_run(store: dict, tiny_model: Path) -> None:
    """Jobs pointed at an interpreter without unsloth (this one): the service still starts, says why, refuses."""
    env = {**store["env"], "TRAINYARD_PYTHON_EXECUTABLE": sys.executable}
    with Server(APP, env, log_path=store["tmp"] / "unavailable.log") as srv, client(srv) as c:
        info = wait_for(c, "/info", lambda i: i["status"] != "starting", timeout=120)
        assert info["status"] == "unavailable"
        assert info["available"] is False, info
        assert "unsloth does not load in the job environment" in info["unavailable_reason"]
        assert "No module named 'unsloth'" in info["unavailable_reason"]
        r = c.post("/train", json=training_request(str(tiny_model), store["uris"]["sft_train"]))
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "backend_unavailable" and "No module named 'unsloth'" in r.json()["detail"]


def test_the_service_process_imports_neither_unsloth_nor_torch() -> None:
    code = ("import sys, services.unsloth.app; bad = {'torch', 'unsloth'} & set(sys.modules); "
            "assert not bad, f'{bad} imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_kubernetes_deployments_need_a_gpu_and_skip_the_local_probe() -> None:
    """On Kubernetes the training image carries unsloth: nothing is probed here, but a GPU is required."""
    from common.schemas import TrainingRequest
    from services.unsloth.backend import UnslothBackend

    backend = UnslothBackend(python="/nonexistent/python")
    assert backend.unavailable_reason("kubernetes") is None
    req = TrainingRequest.model_validate({"base_model": {"model_name": "m"}, "datasets": [{"source": "file:///d.jsonl"}]})
    assert backend.check(req, runner="kubernetes") == ["resources.gpus must be >= 1 for the unsloth backend on Kubernetes"]
    assert "does not exist" in (backend.unavailable_reason("local") or "")


@needs_unsloth_env
def test_reports_starting_while_it_checks_that_unsloth_loads(store: dict, tiny_model: Path, tmp_path: Path) -> None:
    """`import unsloth` in the job environment takes seconds: meanwhile the service, and the gateway's
    /v1/services, say "starting" (not down or unreachable) and a training request is told to retry."""
    with Server(APP, store["env"], log_path=tmp_path / "unsloth.log") as srv, client(srv) as c:
        assert httpx.get(f"{srv.url}/health").json()["status"] == "starting"
        info = c.get("/info").json()
        assert info["status"] == "starting" and info["available"] is False and info["unavailable_reason"] is None
        r = c.post("/train", json=training_request(str(tiny_model), store["uris"]["sft_train"]))
        assert r.status_code == 503 and r.json()["error"] == "backend_starting", r.text
        assert "still starting" in r.json()["detail"] and "try again" in r.json()["detail"]
        env = {**gateway_settings(f"sqlite:///{tmp_path / 'gw.db'}", tmp_path / "objects", tmp_path / "logs"),
               "TRAINYARD_SERVICE_URL_UNSLOTH": srv.url}
        with Server(GATEWAY, env, log_path=tmp_path / "gateway.log") as gw, gateway_client(gw) as g:
            services = {s["name"]: s for s in ok(g.get("/v1/services"))}
            unsloth = services["unsloth"]
            assert unsloth["reachable"] is True and unsloth["status"] in ("starting", "ready"), unsloth
            assert services["huggingface"]["status"] == "unreachable"
            wait_for(c, "/info", lambda i: i["status"] != "starting", timeout=240)
            unsloth = {s["name"]: s for s in ok(g.get("/v1/services"))}["unsloth"]
            assert unsloth["status"] == "ready" and unsloth["info"]["available"] is True, unsloth
        assert httpx.get(f"{srv.url}/health").json()["status"] == "healthy"
