"""The inference service over real HTTP: the tiny model, two LoRA adapters trained here with PEFT and read
from file:// storage, the engine in its worker process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.utils.server import Server

APP = "services.inference.app:app"
TEXTS = {
    "cats": "user: name an animal\nassistant: cat cat cat cat cat cat cat cat",
    "rivers": "user: name a place\nassistant: the river by the old bridge, the river by the old bridge",
}


def _train_adapter(base: Path, text: str, out: Path) -> None:
    """A real (short) LoRA training on one text, so each adapter pulls the model its own way."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM"))
    ids = tok(text, return_tensors="pt").input_ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(25):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference")


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, root: Path) -> dict[str, str]:
    uris = {}
    for name, text in TEXTS.items():
        out = root / "objects" / "results" / name
        _train_adapter(tiny_model, text, out)
        uris[name] = out.as_uri()
    return uris


@pytest.fixture(scope="module")
def service(root: Path, adapters: dict[str, str]) -> Iterator[Server]:
    env = {
        "TRAINYARD_STORAGE_ROOT": str(root / "objects"),
        "TRAINYARD_INFERENCE_CACHE_DIR": str(root / "cache"),
        "TRAINYARD_INFERENCE_MAX_ADAPTERS": "2",
    }
    with Server(APP, env, log_path=root / "inference.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def http(service: Server) -> Iterator[httpx.Client]:
    with service.client(timeout=120) as c:
        yield c


def test_every_route_but_health_takes_the_service_token(service: Server, tiny_model: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"x-trainyard-base-model": str(tiny_model)}
    for token in (None, "not-the-service-token-at-all"):
        with service.client(token=token) as anon:
            assert anon.get("/health").status_code == 200
            for path in ("/v1/chat/completions", "/v1/playground/generate", "/export"):
                r = anon.post(path, json=body, headers=headers)
                assert r.status_code == 401, (path, r.status_code, r.text)
            assert anon.get("/engine").status_code == 401


def _chat(http: httpx.Client, model: str, adapter: str | None = None, **params: object) -> dict:
    headers = {"x-trainyard-base-model": model, **({"x-trainyard-adapter-uri": adapter} if adapter else {})}
    body = {"model": "m", "messages": [{"role": "user", "content": "name an animal"}], "max_tokens": 16,
            "temperature": 0, **params}
    r = http.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _sse(http: httpx.Client, path: str, body: dict, headers: dict | None = None) -> list[dict]:
    with http.stream("POST", path, json=body, headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_chat_streamed_and_whole_answers_agree_with_usage(http: httpx.Client, tiny_model: Path) -> None:
    whole = _chat(http, str(tiny_model), max_tokens=24)
    assert whole["object"] == "chat.completion" and whole["model"] == "m"
    choice = whole["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = whole["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    body = {"model": "m", "messages": [{"role": "user", "content": "name an animal"}], "max_tokens": 24,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    chunks = _sse(http, "/v1/chat/completions", body, {"x-trainyard-base-model": str(tiny_model)})
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == choice["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage


def test_completions_stop_sequence_and_length(http: httpx.Client, tiny_model: Path) -> None:
    headers = {"x-trainyard-base-model": str(tiny_model)}
    body = {"model": str(tiny_model), "prompt": "The", "max_tokens": 30, "temperature": 0}
    full = http.post("/v1/completions", json=body).json()  # no header: `model` is the base
    text = full["choices"][0]["text"]
    assert full["object"] == "text_completion" and text
    short = http.post("/v1/completions", json={**body, "max_tokens": 3}, headers=headers).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    assert text.startswith(short["choices"][0]["text"])
    stop = text.strip()[len(text.strip()) // 2:][:3]  # a sequence from the middle of the greedy answer
    cut = http.post("/v1/completions", json={**body, "stop": [stop]}, headers=headers).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[: text.find(stop)]
    streamed = _sse(http, "/v1/completions", {**body, "stop": stop, "stream": True}, headers)
    assert "".join(c["choices"][0]["text"] for c in streamed) == cut["choices"][0]["text"]


def test_min_tokens_holds_back_the_end_of_turn(http: httpx.Client, tiny_model: Path) -> None:
    free = _chat(http, str(tiny_model), max_tokens=40)
    assert free["choices"][0]["finish_reason"] == "stop" and free["usage"]["completion_tokens"] < 40  # ends its turn early
    held = _chat(http, str(tiny_model), max_tokens=40, min_tokens=40)
    assert held["choices"][0]["finish_reason"] == "length" and held["usage"]["completion_tokens"] == 40
    assert held["choices"][0]["message"]["content"].startswith(free["choices"][0]["message"]["content"])
    r = http.post("/v1/chat/completions", json={"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 8, "min_tokens": 9})
    assert r.status_code == 422 and "min_tokens" in r.json()["error"]["message"], r.text


def test_adapters_share_one_base_and_change_answers(
    http: httpx.Client, tiny_model: Path, adapters: dict[str, str]
) -> None:
    base = _chat(http, str(tiny_model))["choices"][0]["message"]["content"]
    cats = _chat(http, str(tiny_model), adapters["cats"])["choices"][0]["message"]["content"]
    rivers = _chat(http, str(tiny_model), adapters["rivers"])["choices"][0]["message"]["content"]
    assert len({base, cats, rivers}) == 3, (base, cats, rivers)
    # switching back and forth gives the same answers: adapters are selected per request, not stacked
    assert _chat(http, str(tiny_model))["choices"][0]["message"]["content"] == base
    assert _chat(http, str(tiny_model), adapters["cats"])["choices"][0]["message"]["content"] == cats
    loaded = http.get("/engine").json()["loaded"]
    assert list(loaded) == [str(tiny_model)]
    assert sorted(loaded[str(tiny_model)]) == sorted(adapters.values())


def test_concurrent_requests_match_sequential_ones(
    http: httpx.Client, tiny_model: Path, adapters: dict[str, str]
) -> None:
    cases = [(None, 1), (adapters["cats"], 2), (adapters["rivers"], 3), (None, 4), (adapters["cats"], 5)] * 2
    sampled = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 20}

    def run(case: tuple[str | None, int]) -> str:
        out = _chat(http, str(tiny_model), case[0], seed=case[1], **sampled)
        return out["choices"][0]["message"]["content"]

    sequential = [run(c) for c in cases]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        concurrent = list(pool.map(run, cases))
    assert concurrent == sequential
    assert sequential[0] == sequential[5] and sequential[0] != sequential[3]  # same seed, same sample


def test_health_answers_while_a_generation_runs(http: httpx.Client, tiny_model: Path) -> None:
    done = threading.Event()

    def long() -> None:
        _chat(http, str(tiny_model), max_tokens=400, temperature=1.0, seed=7)
        done.set()

    worker = threading.Thread(target=long)
    worker.start()
    healthy = 0
    while not done.is_set() and healthy < 5:
        healthy += http.get("/health", timeout=5).status_code == 200
    worker.join()
    assert healthy >= 1


@pytest.mark.parametrize(
    ("params", "param"),
    [({"n": 2}, "n"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
     ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"logit_bias": {"1": 2}}, "logit_bias"), ({"messages": []}, "messages")],
)
def test_bad_parameters_are_422_in_openai_shape(http: httpx.Client, params: dict, param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **params}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param) and error["message"]


def test_unknown_models_and_adapters_are_404(http: httpx.Client, tiny_model: Path, root: Path) -> None:
    r = http.post("/v1/chat/completions", json={"model": str(root / "no-such-model"), "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", r.text
    missing = (root / "objects" / "results" / "missing").as_uri()
    r = http.post("/v1/completions", json={"model": "m", "prompt": "hi"},
                  headers={"x-trainyard-base-model": str(tiny_model), "x-trainyard-adapter-uri": missing})
    assert r.status_code == 404 and "missing" in r.json()["error"]["message"], r.text


def test_playground_generate(http: httpx.Client, tiny_model: Path, adapters: dict[str, str]) -> None:
    body = {"model_id": "ft:x", "prompt": "name an animal", "max_new_tokens": 12, "temperature": 0}
    headers = {"x-trainyard-base-model": str(tiny_model), "x-trainyard-adapter-uri": adapters["cats"]}
    out = http.post("/v1/playground/generate", json=body, headers=headers).json()
    assert set(out) == {"generated_text", "tokens_generated", "generation_time_ms"}
    assert out["generated_text"] == _chat(http, str(tiny_model), adapters["cats"], max_tokens=12)["choices"][0]["message"]["content"]
    assert 0 < out["tokens_generated"] <= 12 and out["generation_time_ms"] >= 0
    r = http.post("/v1/playground/generate", json={**body, "max_new_tokens": 0})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail", "status_code"}


def test_export_writes_merged_weights_that_generate_like_base_plus_adapter(
    http: httpx.Client, tiny_model: Path, adapters: dict[str, str], root: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = http.post("/export", json={"base_model": str(tiny_model), "adapter_uri": adapters["rivers"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["output_uri"] == adapters["rivers"] + "-merged" and out["size_bytes"] > 0
    merged_dir = root / "objects" / "results" / "rivers-merged"
    assert merged_dir.joinpath("config.json").is_file() and not merged_dir.joinpath("adapter_config.json").exists()

    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    prompt = "user: name a place"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    local = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    served = http.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 12, "temperature": 0},
                       headers={"x-trainyard-base-model": str(tiny_model), "x-trainyard-adapter-uri": adapters["rivers"]})
    assert served.json()["choices"][0]["text"] == local
    base = http.post("/v1/completions", json={"model": str(tiny_model), "prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert base.json()["choices"][0]["text"] != local
