"""Small clients of the gateway API used across the gateway tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.conftest import ADMIN_KEY
from tests.utils.server import REPO, Server

SFT_TRAIN = REPO / "examples" / "sft" / "train.jsonl"
SFT_VALIDATION = REPO / "examples" / "sft" / "validation.jsonl"
DPO_TRAIN = REPO / "examples" / "dpo" / "train.jsonl"
TERMINAL = ("completed", "failed", "cancelled")

# Quick, real LoRA training of the tiny model (a few seconds of steps on a CPU).
TINY_HP = {
    "max_steps": 12, "learning_rate": 3e-3, "batch_size": 8, "lora_r": 8, "lora_alpha": 16,
    "lora_dropout": 0.0, "precision": "fp32", "max_sequence_length": 128, "logging_steps": 2,
}


def client(srv: Server, key: str | None = ADMIN_KEY, **headers: str) -> httpx.Client:
    if key is not None:
        headers["x-portkey-api-key"] = key
    return httpx.Client(base_url=srv.url, headers=headers, timeout=60)


def ok(r: httpx.Response) -> Any:
    """The contract's success body: returns its data."""
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True, body
    return body["data"]


def err(r: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """The error envelope with this status (and error name)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "status_code"} and body["status_code"] == status, body
    if error is not None:
        assert body["error"] == error, body
    return body


def upload_dataset(c: httpx.Client, content: bytes | Path, *, type: str = "training", name: str = "data.jsonl",
                   prefix: str = "/v1", **extra: Any) -> dict[str, Any]:
    """Create a dataset, PUT the file to its signed URL (no API key), attach the key; the dataset."""
    data = content.read_bytes() if isinstance(content, Path) else content
    created = ok(c.post(f"{prefix}/datasets", json={"name": name, "type": type, **extra}))
    ok(httpx.put(created["signed_url"], content=data, timeout=60))
    return ok(c.put(f"{prefix}/datasets/{created['id']}", json={"s3_path": created["s3_path"]}))


def create_finetune(c: httpx.Client, model: str, *, provider: str = "huggingface", **hp: Any) -> str:
    body = {"name": "test", "provider": provider, "model": model, "hyperparameters": hp}
    data = ok(c.post("/v1/finetune", json=body))
    assert data["status"] == "created"
    return data["id"]


def wait_finetune(c: httpx.Client, finetune_id: str, pred: Callable[[dict[str, Any]], bool],
                  timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = ok(c.get(f"/v1/finetune/{finetune_id}"))
        if pred(data):
            return data
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting on finetune {finetune_id}; last: {data}")


def validate(c: httpx.Client, finetune_id: str) -> dict[str, Any]:
    """Run the validation and wait for its outcome."""
    data = ok(c.post(f"/v1/finetune/{finetune_id}/validation/start"))
    assert data["status"] in ("pk_dataset_validation_in_progress", "pk_dataset_validation_successfull",
                              "pk_dataset_validation_failed")
    return wait_finetune(c, finetune_id, lambda f: f["status"] != "pk_dataset_validation_in_progress", timeout=60)


def validated_finetune(c: httpx.Client, model: str, train: bytes | Path = SFT_TRAIN, *, provider: str = "huggingface",
                       **hp: Any) -> tuple[str, str]:
    """(finetune id, dataset id) of a finetune whose dataset passed validation."""
    ds = upload_dataset(c, train)
    finetune_id = create_finetune(c, model, provider=provider, **hp)
    ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
    data = validate(c, finetune_id)
    assert data["status"] == "pk_dataset_validation_successfull", data
    return finetune_id, ds["id"]
