"""A finetune's base model is checked when the finetune is created, over real HTTP: a typo is a 422
before any job exists. Hub ids are looked up on a stand-in hub (``tests.utils.fake_hub``: the real
one cannot be reached here) or on an address where nothing answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.catalog import TINY_MODEL_ID
from common.modelrefs import REFUSED
from gateway.modelrefs import HUB_MISSING, HUB_UNREACHABLE
from tests.gateway.conftest import DEAD_URL, GATEWAY
from tests.gateway.helpers import client, create_finetune, err, ok, upload_dataset, validate
from tests.utils.server import Server

KNOWN_HUB_ID = "acme/real-model"


@pytest.fixture
def model_dirs(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name, files in {"checkpoint": ["config.json"], "adapter": ["adapter_config.json"],
                        "gguf": ["m.Q4_0.gguf"], "not-a-model": ["README.md"]}.items():
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f).write_text("{}")
    return root


def _gateway(env: dict[str, str], model_dirs: Path, hub_url: str, log: Path) -> Server:
    return Server(GATEWAY, {**env, "TRAINYARD_MODEL_HUB_CHECK": "true", "HF_ENDPOINT": hub_url,
                            "TRAINYARD_MODEL_DIRS": json.dumps([str(model_dirs)])}, log_path=log)


@pytest.fixture
def checked_gateway(base_env: dict[str, str], model_dirs: Path, tmp_path: Path) -> Iterator[Server]:
    with Server("tests.utils.fake_hub:app", {"FAKE_HUB_MODELS": KNOWN_HUB_ID}) as hub, \
            _gateway(base_env, model_dirs, hub.url, tmp_path / "gateway.log") as gw:
        yield gw


def _create(c: httpx.Client, model: str) -> httpx.Response:
    return c.post("/v1/finetune", json={"name": "x", "provider": "huggingface", "model": model})


def test_a_typo_is_422_at_create_and_no_finetune_exists(checked_gateway: Server, model_dirs: Path) -> None:
    with client(checked_gateway) as c:
        typo = "acme/real-modle"
        before = c.get("/v1/finetune").json()["count"]  # the database may hold other tests' finetunes
        body = err(_create(c, typo), 422, "model_refused")
        assert body["detail"] == HUB_MISSING.format(field="model", ref=typo)
        assert c.get("/v1/finetune").json()["count"] == before
        # what exists passes: a hub id the hub knows, a catalog id, model directories of each kind
        for model in (KNOWN_HUB_ID, TINY_MODEL_ID, *(str(model_dirs / d) for d in ("checkpoint", "adapter", "gguf"))):
            create_finetune(c, model)
        # a path that is no model, a missing one and a forbidden one: the same words
        details = {err(_create(c, ref), 422)["detail"]
                   for ref in (str(model_dirs / "not-a-model"), str(model_dirs / "missing"), "/etc")}
        assert details == {f"model: {REFUSED}"}
        # override_model at start gets the same check
        finetune_id = create_finetune(c, KNOWN_HUB_ID)
        ds = upload_dataset(c, b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        assert validate(c, finetune_id)["status"] == "pk_dataset_validation_successfull"
        r = c.post(f"/v1/finetune/{finetune_id}/start", json={"override_model": typo})
        assert err(r, 422)["detail"] == HUB_MISSING.format(field="override_model", ref=typo)


def test_without_a_reachable_hub_a_hub_id_is_refused_plainly(base_env: dict[str, str], model_dirs: Path,
                                                             tmp_path: Path) -> None:
    with _gateway(base_env, model_dirs, DEAD_URL, tmp_path / "gateway.log") as gw, client(gw) as c:
        body = err(_create(c, "acme/real-model"), 422, "model_refused")
        assert body["detail"] == HUB_UNREACHABLE.format(field="model", ref="acme/real-model")
        assert "no such local model directory, and not a hub id that can be reached" in body["detail"]
        create_finetune(c, TINY_MODEL_ID)  # catalog ids need no hub
