"""The Trainyard demo: fine-tune a real model through the gateway and compare it with its base.

    make demo                             (or: .venv/bin/python examples/demo.py)
    .venv/bin/python examples/demo.py --task reverse    (the project's tiny model: a fast smoke run)

The default task routes support tickets to one of six team queues (``examples/ticket_routing/``):
SmolLM2-135M-Instruct answers in chatty sentences, never with the bare queue name the team's tools
expect; a short LoRA fine-tune teaches it the house labels. The flow is the data-service contract's:

1. starts the local stack (`make up`: gateway :8080, trainer services :8081-8083, inference :8084)
   unless it runs
2. creates a training and a validation dataset, PUTs each file to its signed URL, attaches it
3. creates a finetune, attaches the datasets, validates them in the background
4. starts the finetune and shows live progress (step, loss) until it completes
5. lists the models registry with the official ``openai`` client (``client.models.list()``)
6. answers the held-out tickets (phrased unlike any training row) with the base model and with the
   fine-tuned one through the gateway's ``/v1/chat/completions`` (the inference service), side by
   side, and prints exact match before and after
7. stops the stack again if it started it

The demo process itself stays light (httpx and openai only): the inference service runs the models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.catalog import SMOLLM2_ID, TINY_MODEL_ID  # noqa: E402
from gateway import localstack  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled")
MAX_ANSWER_TOKENS = 12  # a queue name is one or two tokens; the base model's sentences are cut here
Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Task:
    """One demo: a base model, its data directory (train/validation/heldout.jsonl) and the finetune's knobs."""

    title: str
    model: str
    data_dir: Path
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    show: int = 10  # held-out rows printed side by side (exact match counts them all)


TASKS = {
    "tickets": Task(
        "support ticket routing (demo)", SMOLLM2_ID, REPO / "examples" / "ticket_routing",
        {"method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 2e-3,
         "batch_size": 8, "epochs": 1, "logging_steps": 5, "max_sequence_length": 128, "precision": "fp32"},
    ),
    "reverse": Task(
        "reverse words (tiny model)", TINY_MODEL_ID, REPO / "examples" / "sft",
        {"method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 5e-3,
         "batch_size": 8, "max_steps": 60, "logging_steps": 5, "eval_steps": 20, "max_sequence_length": 128,
         "precision": "fp32"},
        show=3,
    ),
}


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


def follow(c: httpx.Client, finetune_id: str, timeout: float = 1800) -> dict[str, Any]:
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


def finetune(c: httpx.Client, task: Task) -> dict[str, Any]:
    """Datasets, validation, training through the gateway; returns the completed finetune."""
    services = {s["name"]: s for s in data(c.get("/v1/services"))}
    print("trainer services: " + ", ".join(f"{n} {s.get('status', 'unknown')}" for n, s in services.items()))
    if not services.get("huggingface", {}).get("reachable"):
        raise SystemExit("the huggingface trainer service is not reachable; see var/logs/huggingface.log")

    step("1. datasets: create, PUT to the signed URL, attach")
    train_id = upload(c, task.data_dir / "train.jsonl", "training", task.model)
    val_id = upload(c, task.data_dir / "validation.jsonl", "validation", task.model)

    step(f"2. finetune of {task.model}: create, attach the datasets, validate them")
    finetune_id = data(c.post("/v1/finetune", json={
        "name": task.title, "provider": "huggingface", "model": task.model,
        "hyperparameters": task.hyperparameters}))["id"]
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
    started = time.monotonic()
    ft = follow(c, finetune_id)
    if ft["status"] != "completed":
        raise SystemExit(f"finetune {ft['status']}: {ft.get('error')}")

    step("4. result")
    m = ft["metrics"]
    before, after = m.get("eval_loss_before"), m.get("eval_loss")
    if before is not None and after is not None:
        print(f"eval loss before {before:.4f} -> after {after:.4f} ({(after - before) / before:+.0%})")
    if m.get("train_loss") is not None:
        tps = f", {m['train_tokens_per_second']:.0f} tokens/s" if m.get("train_tokens_per_second") else ""
        print(f"train loss {m['train_loss']:.4f}, {m.get('runtime_seconds') or 0:.1f}s of training{tps} "
              f"({time.monotonic() - started:.0f}s from start to completed, model loading included)")
    print(f"model:   {ft['fine_tuned_model']}")
    print(f"adapter: {ft['output_uri']}")
    print(f"logs:    {ft['log_uri']}")
    return ft


def answer_prompts(client: openai.OpenAI, prompts: list[Chat], models: dict[str, str]) -> dict[str, list[str]]:
    """Greedy answers to ``prompts`` by each of ``models`` ({label: model id}), through the gateway's
    OpenAI-compatible chat completions (the inference service), with the official ``openai`` client."""

    def ask(model: str, messages: Chat) -> str:
        reply = client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                               max_tokens=MAX_ANSWER_TOKENS, temperature=0)
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=4) as pool:  # keeps the service's queue full; it runs one at a time
        return {label: list(pool.map(lambda m, model=model: ask(model, m), prompts)) for label, model in models.items()}


def heldout(task: Task) -> tuple[list[Chat], list[str]]:
    """(prompts, expected answers) of the task's held-out rows: chat rows minus their last (assistant)
    turn, or conversational prompt-completion rows split into the two."""
    name = "heldout.jsonl" if (task.data_dir / "heldout.jsonl").is_file() else "validation.jsonl"
    rows = [json.loads(line) for line in (task.data_dir / name).read_text().splitlines() if line.strip()]
    chats = [r["messages"] if "messages" in r else r["prompt"] + r["completion"] for r in rows]
    return [c[:-1] for c in chats], [c[-1]["content"] for c in chats]


def exact_match(answers: list[str], expected: list[str]) -> float:
    return sum(a.strip() == e.strip() for a, e in zip(answers, expected, strict=True)) / len(expected)


def compare(task: Task, client: openai.OpenAI, fine_tuned: str) -> dict[str, float]:
    """Print base vs fine-tuned answers to held-out prompts; return exact match of each."""
    prompts, expected = heldout(task)
    step(f"6. {len(prompts)} held-out prompts, phrased unlike any training row: base vs fine-tuned, "
         "through POST /v1/chat/completions")
    started = time.monotonic()
    answers = answer_prompts(client, prompts, {"base": task.model, "fine-tuned": fine_tuned})
    print(f"(answered in {time.monotonic() - started:.0f}s)")

    def cut(text: str, width: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    print(f"{'prompt':<46} {'expected':<10} {'base model':<34} fine-tuned")
    for i in range(min(task.show, len(prompts))):
        base, tuned = answers["base"][i], answers["fine-tuned"][i]
        mark = "ok " if tuned.strip() == expected[i] else "-- "
        print(f"{cut(prompts[i][-1]['content'], 46):<46} {expected[i]:<10} {cut(base, 34):<34} {mark}{cut(tuned, 30)}")
    scores = {name: exact_match(a, expected) for name, a in answers.items()}
    print(f"\nheld-out exact match: base {scores['base']:.0%} -> fine-tuned {scores['fine-tuned']:.0%} "
          f"({len(prompts)} prompts)")
    return scores


def openai_client(gateway: str, key: str) -> openai.OpenAI:
    """The official OpenAI client pointed at the gateway: the API key is the same one."""
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, timeout=600, max_retries=0)


def show_models(client: openai.OpenAI, fine_tuned: str) -> None:
    step("5. the models registry: GET /v1/models (openai client.models.list())")
    for m in client.models.list():
        extra = m.model_extra or {}
        mark = "  <- this finetune" if m.id == fine_tuned else ""
        print(f"  {m.id:<42} {extra.get('kind', ''):<11} owned by {m.owned_by}{mark}")


def run(task: Task, key: str, gateway: str) -> dict[str, float]:
    with httpx.Client(base_url=gateway, headers={"x-portkey-api-key": key}, timeout=60) as c:
        ft = finetune(c, task)
    client = openai_client(gateway, key)
    show_models(client, ft["fine_tuned_model"])
    return compare(task, client, ft["fine_tuned_model"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Fine-tune through the gateway and compare with the base model.")
    parser.add_argument("--task", choices=sorted(TASKS), default="tickets")
    task = TASKS[parser.parse_args().task]
    if task.model == TINY_MODEL_ID:
        print("building the tiny model (cached after the first run) ...", flush=True)
        subprocess.run([sys.executable, "-m", "common.train.tiny_model", "--out", "var/models/tiny-llama"],
                       cwd=REPO, check=True)
    started = [] if localstack.healthy("gateway") else localstack.up()
    try:
        key = os.environ.get("TRAINYARD_ADMIN_API_KEY") or localstack.secret_env()["TRAINYARD_ADMIN_API_KEY"]
        run(task, key, localstack.url("gateway"))
    finally:
        if started:
            print()
            localstack.down(started)


if __name__ == "__main__":
    main()
