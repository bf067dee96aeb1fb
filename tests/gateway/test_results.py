"""Results through the gateway, over real HTTP after a real tiny finetune: the loss history in the
finetune's events, the output files listed per run with signed download URLs, the downloaded adapter
loaded with PEFT in a fresh interpreter, and a re-run that keeps the first run's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from gateway.artifacts import NO_OUTPUT
from tests.gateway.conftest import GATEWAY, HF_SERVICE
from tests.gateway.helpers import TERMINAL, TINY_HP, client, err, ok, validate, validated_finetune, wait_finetune
from tests.utils.server import Server

LOAD = """
import sys
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])
print(type(model).__name__, model.peft_config["default"].base_model_name_or_path)
"""


@pytest.fixture
def stack(base_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    with Server(HF_SERVICE, base_env, log_path=tmp_path / "service.log") as svc, \
            Server(GATEWAY, {**base_env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": svc.url},
                   log_path=tmp_path / "gateway.log") as gw:
        yield gw


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_finished_finetune_has_its_losses_and_downloadable_adapter(stack: Server, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    with client(stack) as c:
        finetune_id, dataset_id = validated_finetune(c, str(tiny_model), **TINY_HP)
        job_id = ok(c.post(f"/v1/finetune/{finetune_id}/start"))["job_id"]
        ft = wait_finetune(c, finetune_id, lambda f: f["status"] in TERMINAL, timeout=300)
        assert ft["status"] == "completed", ft

        # the loss history: one metrics event per logged step, through the events cursor
        events, after = [], 0
        while page := ok(c.get(f"/v1/finetune/{finetune_id}/events", params={"after": after, "limit": 3})):
            events += page
            after = page[-1]["id"]
        steps = [e["data"] for e in events if e["type"] == "metrics" and not e["data"].get("final")]
        logged = [s for s in steps if s.get("loss") is not None]
        assert [s["step"] for s in logged] == list(range(2, TINY_HP["max_steps"] + 1, 2))
        assert all(s["loss"] > 0 and s["learning_rate"] > 0 and s["job_id"] == job_id for s in logged)
        assert any(e["type"] == "metrics" and e["data"].get("final") for e in events)
        done = next(e for e in events if e["type"] == "status" and e["data"].get("status") == "completed")
        assert done["data"]["output_uri"] == ft["output_uri"]

        # the output files, each downloaded with its signed URL and no API key
        runs = ok(c.get(f"/v1/finetune/{finetune_id}/artifacts"))["runs"]
        assert [r["job_id"] for r in runs] == [job_id] and runs[0]["output_uri"] == ft["output_uri"]
        files = {f["path"]: f for f in runs[0]["files"]}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
        adapter = tmp_path / "adapter"
        for path, f in files.items():
            r = httpx.get(f["url"], timeout=60)
            assert r.status_code == 200 and len(r.content) == f["size_bytes"], (path, r.text[:200])
            (adapter / path).parent.mkdir(parents=True, exist_ok=True)
            (adapter / path).write_bytes(r.content)
        # the URL is the credential: any change to it is refused
        url = urlsplit(files["adapter_config.json"]["url"])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        tampered = f"{url.scheme}://{url.netloc}{url.path.replace('adapter_config', 'adapter_model')}?{url.query}"
        err(httpx.get(tampered), 403, "invalid_signature")
        expired = f"{url.scheme}://{url.netloc}{url.path}?{urlencode({**query, 'expires': int(query['expires']) - 10**6})}"
        err(httpx.get(expired), 403, "invalid_signature")

        # the adapter names its base as given, and loads with PEFT alone
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
        loaded = subprocess.run([sys.executable, "-c", LOAD, str(adapter)], capture_output=True, text=True,
                                timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        assert loaded.stdout.split() == ["PeftModelForCausalLM", str(tiny_model)]

        # a reset and a second run, cancelled at once: the first run's outputs stay listed
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": dataset_id}))
        assert validate(c, finetune_id)["status"] == "pk_dataset_validation_successfull"
        second = ok(c.post(f"/v1/finetune/{finetune_id}/start"))["job_id"]
        ok(c.post(f"/v1/finetune/{finetune_id}/cancel"))
        ft = wait_finetune(c, finetune_id, lambda f: f["status"] in TERMINAL)
        assert [r["job_id"] for r in ft["runs"]] == [job_id, second]
        assert ft["runs"][0]["output_uri"] == runs[0]["output_uri"]
        runs = ok(c.get(f"/v1/finetune/{finetune_id}/artifacts"))["runs"]
        assert [r["job_id"] for r in runs] == [second, job_id]
        cancelled, first = runs
        assert cancelled["files"] or (cancelled["output_uri"] is None and cancelled["note"] == NO_OUTPUT)
        assert {f["path"] for f in first["files"]} == set(files)
