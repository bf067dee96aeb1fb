"""The official ``openai`` SDK against the gateway: a real finetune of the tiny model through the gateway
becomes ``ft:<id>``, which the SDK lists and chats with (whole and streamed) beside the base model, via the
real HuggingFace trainer service and the real inference service."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.conftest import GATEWAY, HF_SERVICE, gateway_settings
from tests.gateway.helpers import TINY_HP, client, ok, validated_finetune, wait_finetune
from tests.utils.server import Server

INFERENCE = "services.inference.app:app"
TINY_ID = "trainyard/tiny-llama"
MESSAGES = [{"role": "user", "content": "name an animal"}]


@dataclass
class Stack:
    gateway: Server
    key: str
    workspace: str
    ft_model: str
    storage_root: Path

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=key or self.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    from common.db import make_engine
    from common.schemas import Scope
    from gateway import auth

    root = tmp_path_factory.mktemp("inference-stack")
    (root / "objects").mkdir()
    env = gateway_settings(f"sqlite:///{root / 'trainyard.db'}", root / "objects", root / "logs")
    env["TRAINYARD_INFERENCE_CACHE_DIR"] = str(root / "cache")
    with (
        Server(HF_SERVICE, env, log_path=root / "service.log") as svc,
        Server(INFERENCE, env, log_path=root / "inference.log") as inf,
    ):
        gw_env = {**env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": svc.url, "TRAINYARD_SERVICE_URL_INFERENCE": inf.url}
        with Server(GATEWAY, gw_env, log_path=root / "gateway.log") as gw:
            workspace = f"ws-{uuid.uuid4().hex[:8]}"
            engine = make_engine(env["TRAINYARD_DATABASE_URL"])
            try:
                _, key = auth.create_key(engine, name="sdk", workspace_id=workspace, scopes=[Scope.write])
            finally:
                engine.dispose()
            c = client(gw, key)
            finetune_id, _ = validated_finetune(c, str(tiny_model), **TINY_HP)
            ok(c.post(f"/v1/finetune/{finetune_id}/start"))
            done = wait_finetune(c, finetune_id, lambda f: f["status"] in ("completed", "failed", "cancelled"), timeout=300)
            assert done["status"] == "completed", done
            yield Stack(gw, key, workspace, done["fine_tuned_model"], root / "objects")


def test_sdk_lists_and_chats_with_the_fine_tuned_model(stack: Stack) -> None:
    sdk = stack.sdk()
    ids = [m.id for m in sdk.models.list()]
    assert stack.ft_model in ids and TINY_ID in ids

    answers = {}
    for model in (TINY_ID, stack.ft_model):
        whole = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)
        assert whole.model == model and whole.choices[0].finish_reason in ("stop", "length")
        assert whole.usage is not None and whole.usage.completion_tokens > 0
        stream = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
                                             stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
        answers[model] = text
    assert answers[TINY_ID] != answers[stack.ft_model]

    completion = sdk.completions.create(model=stack.ft_model, prompt="The", max_tokens=5, temperature=0)
    assert completion.choices[0].text and completion.usage is not None


def test_sdk_errors(stack: Stack, tmp_path: Path) -> None:
    sdk = stack.sdk()
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="ft:no-such-finetune", messages=MESSAGES)
    assert e.value.body["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        sdk.chat.completions.create(model=TINY_ID, messages=MESSAGES, n=2)
    assert e.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(model=TINY_ID, messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.AuthenticationError):
        stack.sdk("ty_not_a_key").chat.completions.create(model=TINY_ID, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):  # another workspace's model does not exist for this one
        from common.db import make_engine
        from common.schemas import Scope
        from gateway import auth

        engine = make_engine(f"sqlite:///{stack.storage_root.parent / 'trainyard.db'}")
        try:
            _, other = auth.create_key(engine, name="other", workspace_id="another-ws", scopes=[Scope.write])
        finally:
            engine.dispose()
        stack.sdk(other).chat.completions.create(model=stack.ft_model, messages=MESSAGES)


def test_model_still_training_is_409(stack: Stack, tiny_model: Path) -> None:
    c = client(stack.gateway, stack.key)
    finetune_id, _ = validated_finetune(c, str(tiny_model), **{**TINY_HP, "max_steps": 100_000})
    ok(c.post(f"/v1/finetune/{finetune_id}/start"))
    try:
        with pytest.raises(openai.ConflictError):
            stack.sdk().chat.completions.create(model=f"ft:{finetune_id}", messages=MESSAGES)
    finally:
        ok(c.post(f"/v1/finetune/{finetune_id}/cancel"))


def test_playground_and_export_through_the_gateway(stack: Stack) -> None:
    c = client(stack.gateway, stack.key)
    r = c.post("/v1/playground/generate", json={"model_id": stack.ft_model, "prompt": "name an animal",
                                               "max_new_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["tokens_generated"] > 0
    assert c.post("/v1/playground/generate", json={"model_id": "ft:nope", "prompt": "x"}).status_code == 404

    r = c.post(f"/v1/models/{stack.ft_model}/export", timeout=300)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["merged_uri"] == model["adapter_uri"].rstrip("/") + "-merged"
    merged = Path(httpx.URL(model["merged_uri"]).path)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(merged).num_parameters() > 0
    assert c.get(f"/v1/models/{stack.ft_model}").json()["merged_uri"] == model["merged_uri"]
    r = c.post(f"/v1/models/{TINY_ID}/export")
    assert r.status_code == 400 and set(r.json()) == {"error", "detail", "status_code"}
