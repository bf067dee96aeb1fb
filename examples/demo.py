"""The Trainyard demo: a real LoRA fine-tune of the project's tiny model, driven through the gateway
exactly as a user or control plane would (the data-service contract's flow).

    make demo        (or: .venv/bin/python examples/demo.py)

1. starts the local stack (`make up`: gateway :8080, trainer services :8081-8083) unless it runs
2. creates a training and a validation dataset, PUTs each file to its signed URL, attaches it
3. creates a finetune, attaches the datasets, validates them in the background
4. starts the finetune and shows live progress (step, loss) until it completes
5. prints the eval loss before/after and where the adapter is, then loads base + adapter and
   answers a held-out prompt
6. stops the stack again if it started it
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import localstack  # noqa: E402

GATEWAY = localstack.url("gateway")
SAMPLES = REPO / "examples" / "sft"
HYPERPARAMETERS = {
    "method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 5e-3,
    "batch_size": 8, "max_steps": 60, "logging_steps": 5, "eval_steps": 20, "max_sequence_length": 128,
    "precision": "fp32",
}
TERMINAL = ("completed", "failed", "cancelled")


def data(r: httpx.Response) -> Any:
    if r.status_code != 200:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        raise SystemExit(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {json.dumps(body)}")
    return r.json()["data"]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def upload(c: httpx.Client, path: Path, kind: str, model: str) -> str:
    created = data(c.post("/v1/datasets", json={"name": path.name, "provider": "huggingface", "model": model,
                                                 "type": kind}))
    put = httpx.put(created["signed_url"], content=path.read_bytes(), timeout=60)  # the URL is the credential
    put.raise_for_status()
    ds = data(c.put(f"/v1/datasets/{created['id']}", json={"s3_path": created["s3_path"]}))
    print(f"{kind:<10} dataset {ds['id']}: {ds['size_bytes']} bytes at {ds['s3_path']}")
    return ds["id"]


def follow(c: httpx.Client, finetune_id: str, timeout: float = 900) -> dict[str, Any]:
    """Poll the finetune and print each new step; return it once it ends."""
    deadline = time.monotonic() + timeout
    shown = (None, None)
    while time.monotonic() < deadline:
        ft = data(c.get(f"/v1/finetune/{finetune_id}"))
        p = ft["progress"]
        if p.get("step") and (ft["status"], p["step"]) != shown:
            shown = (ft["status"], p["step"])
            loss = f"{p['loss']:.4f}" if p.get("loss") is not None else "-"
            eval_loss = f"  eval loss {p['eval_loss']:.4f}" if p.get("eval_loss") is not None else ""
            print(f"  step {p['step']:>4}/{p.get('total_steps') or '?'}  loss {loss}{eval_loss}  "
                  f"({p.get('percent', 0):.0f}%)", flush=True)
        elif ft["status"] != shown[0] and not p.get("step"):
            shown = (ft["status"], None)
            print(f"  {ft['status']}", flush=True)
        if ft["status"] in TERMINAL:
            return ft
        time.sleep(0.5)
    raise SystemExit(f"finetune {finetune_id} did not finish in {timeout:.0f}s")


def answer(model_dir: Path, adapter_uri: str, prompt: str) -> str:
    """Load base + adapter with transformers/PEFT (here, in the client) and answer one prompt."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    from common.storage import ObjectStore

    adapter_dir = ObjectStore().local_path(adapter_uri)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run(model_dir: Path, key: str) -> None:
    model = str(model_dir)
    with httpx.Client(base_url=GATEWAY, headers={"x-portkey-api-key": key}, timeout=60) as c:
        services = {s["name"]: s["reachable"] for s in data(c.get("/v1/services"))}
        print("trainer services: " + ", ".join(f"{n} {'up' if ok else 'down'}" for n, ok in services.items()))
        if not services.get("huggingface"):
            raise SystemExit("the huggingface trainer service is not reachable; see var/logs/huggingface.log")

        step("1. datasets: create, PUT to the signed URL, attach")
        train_id = upload(c, SAMPLES / "train.jsonl", "training", model)
        val_id = upload(c, SAMPLES / "validation.jsonl", "validation", model)

        step("2. finetune: create, attach the datasets, validate them")
        finetune_id = data(c.post("/v1/finetune", json={
            "name": "reverse words (demo)", "provider": "huggingface", "model": model,
            "hyperparameters": HYPERPARAMETERS}))["id"]
        ft = data(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": train_id,
                                                            "validation_dataset_id": val_id}))
        print(f"finetune {finetune_id}: {ft['status']}")
        ft = data(c.post(f"/v1/finetune/{finetune_id}/validation/start"))
        print(f"  {ft['status']}")
        while ft["status"] == "pk_dataset_validation_in_progress":
            time.sleep(0.3)
            ft = data(c.get(f"/v1/finetune/{finetune_id}"))
        print(f"  {ft['status']}")
        for role in ("training", "validation"):
            report = ft["validation"][role]
            tokens = report.get("tokens") or {}
            print(f"  {role}: {report['rows']} rows, format {report['format']}, {report['errors_total']} errors, "
                  f"{tokens.get('total', '?')} tokens (longest row {tokens.get('max', '?')})")
        if ft["status"] != "pk_dataset_validation_successfull":
            raise SystemExit(json.dumps(ft["validation"], indent=2))

        step("3. start: the gateway submits the job to the huggingface service")
        ft = data(c.post(f"/v1/finetune/{finetune_id}/start", json={}))
        print(f"job {ft['job_id']}: {ft['status']}")
        ft = follow(c, finetune_id)
        if ft["status"] != "completed":
            raise SystemExit(f"finetune {ft['status']}: {ft.get('error')}")

        step("4. result")
        m = ft["metrics"]
        before, after = m.get("eval_loss_before"), m.get("eval_loss")
        if before is not None and after is not None:
            print(f"eval loss before {before:.4f} -> after {after:.4f} ({(after - before) / before:+.0%})")
        if m.get("train_loss") is not None:
            print(f"train loss {m['train_loss']:.4f}, {m.get('runtime_seconds') or 0:.1f}s of training")
        print(f"adapter: {ft['output_uri']}")
        print(f"logs:    {ft['log_uri']}")

        step("5. base + adapter answer a held-out prompt")
        row = json.loads((SAMPLES / "validation.jsonl").read_text().splitlines()[0])
        prompt, expected = row["messages"][0]["content"], row["messages"][-1]["content"]
        print(f"prompt:   {prompt}\nexpected: {expected}\nanswer:   {answer(model_dir, ft['output_uri'], prompt)}")


def main() -> None:
    from common.train.tiny_model import build_tiny_model

    print("building the tiny model (cached after the first run) ...", flush=True)
    model_dir = build_tiny_model(REPO / "var" / "models" / "tiny-llama")
    started = [] if localstack.healthy("gateway") else localstack.up()
    try:
        key = os.environ.get("TRAINYARD_ADMIN_API_KEY") or localstack.secret_env()["TRAINYARD_ADMIN_API_KEY"]
        run(model_dir, key)
    finally:
        if started:
            print()
            localstack.down(started)


if __name__ == "__main__":
    main()
