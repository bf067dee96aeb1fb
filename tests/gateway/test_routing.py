"""Routing to trainer services: a service that is down gives 503 and leaves nothing half-started;
an unknown provider is a 422; DPO goes to the DPO service; the gateway never imports torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GATEWAY, HF_SERVICE, Tenant
from tests.gateway.helpers import client, create_finetune, err, ok, validated_finetune
from tests.utils.server import REPO, Server, free_port, service_headers

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Silent:
    """A TCP server that accepts connections and never answers: a hung trainer service."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@SQLITE
def test_a_service_that_is_down_gives_503_and_nothing_half_started(
    base_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    env = {**base_env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": service_url, "TRAINYARD_SERVICE_TIMEOUT_SECONDS": "1"}
    with Server(GATEWAY, env, log_path=tmp_path / "gw.log") as gw, client(gw) as c:
        finetune_id, _ = validated_finetune(c, str(tiny_model), max_steps=1)
        # nothing listens: refused at once, and the start is undone
        body = err(c.post(f"/v1/finetune/{finetune_id}/start"), 503, "service_unavailable")
        assert service_url in body["detail"] and "is it running?" in body["detail"]
        ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
        assert ft["status"] == "pk_dataset_validation_successfull" and ft["job_id"] is None
        events = ok(c.get(f"/v1/finetune/{finetune_id}/events"))
        assert [e["data"]["status"] for e in events if e["type"] == "status"][-1] == "pk_dataset_validation_successfull"
        assert events[-1]["type"] == "start" and "nothing was started" in events[-1]["message"]
        services = {s["name"]: s for s in ok(c.get("/v1/services"))}
        assert services["huggingface"]["reachable"] is False and services["huggingface"]["url"] == service_url

        # a hung service: the request may have arrived, so the start stays claimed (not pending, not free)
        silent = Silent(port)
        try:
            assert "did not answer" in err(c.post(f"/v1/finetune/{finetune_id}/start"), 503)["detail"]
            assert "already being started" in err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)["detail"]
            assert ok(c.get(f"/v1/finetune/{finetune_id}"))["status"] == "pk_dataset_validation_successfull"
            # it took the connection: up but not answering, which /v1/services does not call unreachable
            hung = {s["name"]: s for s in ok(c.get("/v1/services"))}["huggingface"]
            assert hung["reachable"] is True and hung["status"] == "not_responding", hung
        finally:
            silent.close()

        # once the service is up, the refresher learns that job never arrived and frees the finetune,
        # which then starts (as attempt 1: the failed tries left no trace but events)
        with Server(HF_SERVICE, base_env, port=port, log_path=tmp_path / "service.log"):
            deadline = time.monotonic() + 30
            while c.post(f"/v1/finetune/{finetune_id}/start").status_code == 409 and time.monotonic() < deadline:
                time.sleep(0.5)
            ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
            assert ft["status"] in ("pending", "running", "completed") and ft["job_id"].startswith(f"{finetune_id}-1-")
            assert httpx.get(f"{service_url}/jobs/{ft['job_id']}", headers=service_headers()).json()["labels"]["finetune"] == finetune_id
            assert ok(c.get("/v1/services"))[0]["reachable"] is True
            c.post(f"/v1/finetune/{finetune_id}/cancel")


def test_provider_picks_the_service_and_unknown_providers_are_refused(tenant: Tenant, tiny_model: Path) -> None:
    with tenant.client() as c:
        body = err(c.post("/v1/finetune", json={"name": "x", "provider": "openai", "model": "gpt-4"}), 422,
                   "validation_error")
        assert body["detail"][0]["loc"][-1] == "provider" and "huggingface" in body["detail"][0]["msg"]
        err(c.post("/v1/datasets", json={"name": "x.jsonl", "provider": "cohere"}), 422)
        routes = {}
        for provider, hp in (("huggingface", {}), ("unsloth", {}), ("dpo", {}),
                             ("huggingface", {"training_type": "dpo"})):
            finetune_id = create_finetune(c, str(tiny_model), provider=provider, **hp)
            ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
            routes[(provider, hp.get("training_type"))] = (ft["service"], ft["training_type"])
        assert routes == {
            ("huggingface", None): ("huggingface", "sft"), ("unsloth", None): ("unsloth", "sft"),
            ("dpo", None): ("dpo", "dpo"), ("huggingface", "dpo"): ("dpo", "dpo"),
        }
        # hyperparameters are typed and checked when the finetune is created
        bad = {"name": "x", "provider": "huggingface", "model": "m"}
        err(c.post("/v1/finetune", json={**bad, "hyperparameters": {"learning_rate": 0}}), 422)
        err(c.post("/v1/finetune", json={**bad, "hyperparameters": {"warp_speed": 9}}), 422)
        err(c.post("/v1/finetune", json={**bad, "hyperparameters": {"method": "magic"}}), 422)
        err(c.post("/v1/finetune", json={**bad, "provider": "dpo", "hyperparameters": {"training_type": "sft"}}), 422)
        ft = ok(c.post("/v1/finetune", json={**bad, "hyperparameters": {"rank": 4, "epochs": 2}}))
        hp = ok(c.get(f"/v1/finetune/{ft['id']}"))["hyperparameters"]
        assert hp["lora_r"] == 4 and hp["epochs"] == 2

        # an unsloth finetune whose service is not running
        unsloth, _ = validated_finetune(c, str(tiny_model), provider="unsloth")
        body = err(c.post(f"/v1/finetune/{unsloth}/start"), 503)
        assert "unsloth trainer service" in body["detail"] and "is it running?" in body["detail"]


def test_the_gateway_never_imports_torch(tiny_model: Path) -> None:
    code = (
        "import sys, io, gateway.app, common.validation as v\n"
        "from common.schemas import TrainingType\n"
        f"tok, name = v.load_tokenizer({str(tiny_model)!r})\n"
        "assert tok is not None, name\n"
        "r = v.validate_stream(io.BytesIO(open('examples/sft/train.jsonl', 'rb').read()), TrainingType.sft, tokenizer=tok)\n"
        "assert r.valid and r.tokens.total > 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
