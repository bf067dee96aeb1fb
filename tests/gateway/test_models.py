"""The models registry through the official OpenAI client: a real finetune of the tiny model registers
its model, which lists, retrieves, survives restarts (and is registered on start when its row is
missing), stays in its workspace, resolves for inference, records an export, and deletes its
artifacts from storage."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import openai
import pytest
from sqlalchemy import delete, select

from common.db import make_engine, tx
from common.errors import Conflict, NotFound
from common.schemas import Scope
from common.settings import Settings
from common.storage import ObjectStore
from gateway import auth, db
from gateway.context import Gateway
from gateway.inference import InferenceClient
from gateway.models import ServedModel, merged_target, record_export, resolve_for_inference
from gateway.trainers import TrainerClient
from tests.gateway.conftest import GATEWAY, HF_SERVICE
from tests.gateway.helpers import (
    TERMINAL,
    TINY_HP,
    client,
    create_finetune,
    ok,
    validated_finetune,
    wait_finetune,
)
from tests.utils.server import Server

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def openai_client(srv: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=60)


def stored_files(root: Path, uri: str) -> dict[str, int]:
    """Files under a file:// prefix of the store, by relative path, with their sizes."""
    base = Path(uri.removeprefix("file://"))
    assert base.is_relative_to(root), (base, root)
    return {str(p.relative_to(base)): p.stat().st_size for p in base.rglob("*") if p.is_file()} if base.exists() else {}


def in_process_gateway(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The registry functions the inference routes call, on the same database and store as the server."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    return Gateway(settings, make_engine(settings.database_url), ObjectStore(settings), TrainerClient(settings), b"-",
                   InferenceClient(settings))


def test_a_finetune_registers_a_model_the_openai_client_lists_retrieves_and_deletes(
    base_env: dict[str, str], storage_root: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = Server(HF_SERVICE, base_env, log_path=tmp_path / "service.log").start()
    env = {**base_env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": svc.url}
    gw = Server(GATEWAY, env, log_path=tmp_path / "gw.log").start()
    engine = make_engine(env["TRAINYARD_DATABASE_URL"])
    _, key_a = auth.create_key(engine, name="a", workspace_id="team-a", scopes=[Scope.write])
    _, reader_a = auth.create_key(engine, name="a-reader", workspace_id="team-a", scopes=[Scope.read])
    _, key_b = auth.create_key(engine, name="b", workspace_id="team-b", scopes=[Scope.write])
    try:
        with client(gw, key_a) as c:
            finetune_id, _ = validated_finetune(c, str(tiny_model), **TINY_HP)
            model_id = f"ft:{finetune_id}"
            assert ok(c.get(f"/v1/finetune/{finetune_id}"))["fine_tuned_model"] is None
            ok(c.post(f"/v1/finetune/{finetune_id}/start"))
            ft = wait_finetune(c, finetune_id, lambda f: f["status"] in TERMINAL, timeout=180)
            assert ft["status"] == "completed", ft
            assert ft["fine_tuned_model"] == model_id

        a, b = openai_client(gw, key_a), openai_client(gw, key_b)
        listed = {m.id: m for m in a.models.list()}
        assert {SMOLLM2, "trainyard/tiny-llama", model_id} <= set(listed)
        assert listed[SMOLLM2].owned_by == "HuggingFaceTB" and listed[SMOLLM2].model_extra["kind"] == "base"
        model = a.models.retrieve(model_id)
        assert model.model_dump(exclude_unset=True) == listed[model_id].model_dump(exclude_unset=True)
        assert model.object == "model" and model.owned_by == "team-a"
        extra = model.model_extra or {}
        assert extra["kind"] == "fine-tuned" and extra["finetune_id"] == finetune_id
        assert extra["base_model"] == str(tiny_model) and extra["provider"] == "huggingface"
        assert extra["method"] == "lora" and extra["training_type"] == "sft"
        assert extra["training_params"] == TINY_HP  # as sent
        assert abs(model.created - int(datetime.fromisoformat(ft["finished_at"]).timestamp())) <= 1

        # metrics: the job's metrics.json, plus perplexity = exp(eval_loss)
        files = stored_files(storage_root, ft["output_uri"])
        assert extra["adapter_uri"] == ft["output_uri"] and extra["merged_uri"] is None
        assert "adapter_config.json" in files and extra["size_bytes"] == sum(files.values()) > 0
        written = json.loads((Path(ft["output_uri"].removeprefix("file://")) / "metrics.json").read_text())
        metrics = extra["metrics"]
        assert metrics["train_loss"] == written["train_loss"] > 0 and metrics["steps"] == written["steps"] == 12
        assert metrics["eval_loss"] == written["eval_loss"] > 0
        assert metrics["perplexity"] == pytest.approx(math.exp(written["eval_loss"]))

        # base models retrieve by their hub id (the client sends the slash as %2F)
        base = a.models.retrieve(SMOLLM2)
        assert base.id == SMOLLM2 and base.created == 0 and (base.model_extra or {})["kind"] == "base"

        # another workspace: no such model, whatever it tries
        assert model_id not in {m.id for m in b.models.list()}
        with pytest.raises(openai.NotFoundError):
            b.models.retrieve(model_id)
        with pytest.raises(openai.NotFoundError):
            b.models.delete(model_id)
        with pytest.raises(openai.NotFoundError):
            a.models.retrieve("ft:ft-000000000000")
        with pytest.raises(openai.PermissionDeniedError):  # base models cannot be deleted
            a.models.delete(SMOLLM2)
        with pytest.raises(openai.PermissionDeniedError):  # deleting takes the write scope
            openai_client(gw, reader_a).models.delete(model_id)

        # the registry survives a restart ...
        gw.stop()
        gw = Server(GATEWAY, env, log_path=tmp_path / "gw.log").start()
        a = openai_client(gw, key_a)
        assert a.models.retrieve(model_id).model_dump() == model.model_dump()
        # ... and a completed finetune without its row (a database from before the registry) is
        # registered when a gateway starts, before any request asks for it
        gw.stop()
        with tx(engine) as conn:
            conn.execute(delete(db.models).where(db.models.c.id == model_id))
        gw = Server(GATEWAY, env, log_path=tmp_path / "gw.log").start()
        with tx(engine) as conn:
            assert conn.execute(select(db.models.c.id).where(db.models.c.id == model_id)).scalar() == model_id
        a = openai_client(gw, key_a)
        assert a.models.retrieve(model_id).model_dump() == model.model_dump()

        # what the inference routes call
        core = in_process_gateway(env, monkeypatch)
        try:
            assert resolve_for_inference(core, "team-a", model_id) == ServedModel(
                id=model_id, base_model=str(tiny_model), adapter_uri=ft["output_uri"])
            assert resolve_for_inference(core, "team-a", SMOLLM2) == ServedModel(SMOLLM2, SMOLLM2, None)
            for workspace, unknown in (("team-b", model_id), ("team-a", "no-such-model"), ("team-a", "ft:ft-x")):
                with pytest.raises(NotFound):
                    resolve_for_inference(core, workspace, unknown)
            with client(gw, key_a) as c:
                waiting = create_finetune(c, str(tiny_model))
                with pytest.raises(Conflict):  # it will be a model once it completes
                    resolve_for_inference(core, "team-a", f"ft:{waiting}")
                ok(c.post(f"/v1/finetune/{waiting}/cancel"))
                with pytest.raises(NotFound):  # cancelled: it never will
                    resolve_for_inference(core, "team-a", f"ft:{waiting}")

            # an export's merged weights are recorded and counted
            merged = merged_target(ft["output_uri"])
            core.store.put_bytes(core.store.join(merged, "model.safetensors"), b"m" * 1000)
            with pytest.raises(NotFound):
                record_export(core, "team-b", model_id, merged)
            exported = record_export(core, "team-a", model_id, merged)
            assert exported.merged_uri == merged and exported.size_bytes == sum(files.values()) + 1000
        finally:
            core.engine.dispose()
        assert (a.models.retrieve(model_id).model_extra or {})["merged_uri"] == merged

        # delete: the artifacts leave storage, the model is gone, the finetune keeps its record
        deleted = a.models.delete(model_id)
        assert deleted.id == model_id and deleted.deleted is True and deleted.object == "model"
        assert stored_files(storage_root, ft["output_uri"]) == {} and stored_files(storage_root, merged) == {}
        with pytest.raises(openai.NotFoundError):
            a.models.retrieve(model_id)
        with pytest.raises(openai.NotFoundError):
            a.models.delete(model_id)
        assert model_id not in {m.id for m in a.models.list()}
        with client(gw, key_a) as c:
            assert ok(c.get(f"/v1/finetune/{finetune_id}"))["status"] == "completed"
            events = [e["message"] for e in ok(c.get(f"/v1/finetune/{finetune_id}/events"))]
            assert f"model {model_id} registered" in events and any(m.startswith(f"model {model_id} deleted") for m in events), "\n".join(events)
            assert any(m.startswith(f"model {model_id} deleted") for m in events)
        # a deleted model stays deleted across restarts (never registered again)
        gw.stop()
        gw = Server(GATEWAY, env, log_path=tmp_path / "gw.log").start()
        with pytest.raises(openai.NotFoundError):
            openai_client(gw, key_a).models.retrieve(model_id)
    finally:
        gw.stop()
        svc.stop()
        engine.dispose()
