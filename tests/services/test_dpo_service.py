"""The DPO trainer service over real HTTP: uvicorn subprocesses, SQLite, file:// storage and real
DPO training of the project's tiny model on the shipped preference sample (examples/dpo).

The learning signal is DPO's own: the reward margin (chosen minus rejected implicit reward) and
the reward accuracy on the held-out split, measured before and after training.
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

from tests.utils.factories import place_samples, training_request
from tests.utils.server import REPO, Server, wait_for

TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A DPO and a HuggingFace service sharing one database and one object store (as a deployment does)."""
    tmp = tmp_path_factory.mktemp("dpo")
    root = tmp / "objects"
    uris = place_samples(root)
    env = {
        "TRAINYARD_DATABASE_URL": f"sqlite:///{tmp / 'trainyard.db'}",
        "TRAINYARD_STORAGE_ROOT": str(root),
        "TRAINYARD_LOG_DIR": str(tmp / "logs"),
        "OMP_NUM_THREADS": "1",  # inherited by the jobs: one thread trains the tiny model fastest on a busy box
        "HF_HUB_OFFLINE": "1",
    }
    dpo = Server("services.dpo.app:app", env, log_path=tmp / "dpo.log").start()
    hf = Server("services.huggingface.app:app", env, log_path=tmp / "hf.log")
    try:
        hf.start()
        yield {"dpo": dpo, "hf": hf, "uris": uris, "root": root}
    finally:
        hf.stop()
        dpo.stop()


def client(srv: object) -> httpx.Client:
    assert isinstance(srv, Server)
    return srv.client(timeout=60)


def dpo_request(model: str, uris: dict[str, str], **tuning: object) -> dict:
    req = training_request(model, uris["dpo_train"], validation_uri=uris["dpo_validation"], **tuning)
    req["tuning_parameters"] |= {"learning_rate": 5e-3, "max_steps": 20}
    req["tuning_parameters"] |= tuning
    return req


def run_job(c: httpx.Client, req: dict) -> dict:
    r = c.post("/train", json=req)
    assert r.status_code == 202, r.text
    job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in TERMINAL, timeout=300)
    assert job["status"] == "completed", (job, c.get(f"/jobs/{req['job_id']}/logs", params={"tail": 40}).json())
    return job


def assert_margin_rose(m: dict) -> None:
    assert m["reward_margin_before"] == pytest.approx(0.0, abs=1e-6), m  # adapter starts at zero: policy == reference
    assert m["reward_margin"] > m["reward_margin_before"] + 0.01, m
    assert m["reward_accuracy"] > 0.5 >= m["reward_accuracy_before"], m
    assert m["eval_loss"] < m["eval_loss_before"], m


@pytest.mark.slow
def test_dpo_job_raises_the_reward_margin(stack, tiny_model: Path) -> None:
    req = dpo_request(str(tiny_model), stack["uris"])
    with client(stack["dpo"]) as c:
        job = run_job(c, req)
        m = job["metrics"]
        assert_margin_rose(m)
        assert m["beta"] == 0.1 and m["loss_type"] == "sigmoid" and m["steps"] == 20 and m["eval_rows"] == 40
        events = c.get(f"/jobs/{req['job_id']}/events").json()["data"]
        steps = [e["data"]["progress"]["step"] for e in events if e["type"] == "progress" and "loss" in e["data"]["progress"]]
        assert steps == [5, 10, 15, 20], events
        messages = " ".join(e["message"] for e in events)
        assert "320 train / 40 validation pairs (preference)" in messages and "before training: reward margin" in messages

    out = Path(job["output_uri"].removeprefix("file://"))
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("reward_margin_before", "reward_margin", "reward_accuracy_before", "reward_accuracy"):
        assert on_disk[key] == m[key]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)


@pytest.mark.slow
def test_sft_then_dpo_pipeline(stack, tiny_model: Path) -> None:
    """DPO whose base is an SFT job's output URI: the adapter is merged into its base, DPO trains on top."""
    sft = training_request(str(tiny_model), stack["uris"]["sft_train"], max_steps=60, learning_rate=5e-3)
    with client(stack["hf"]) as c:
        sft_job = run_job(c, sft)
    sft_uri = sft_job["output_uri"]
    assert sft_uri.startswith("file://")

    # max_prompt_length keeps the last 12 prompt tokens (the words to reverse): exercised end to end here.
    req = dpo_request(sft_uri, stack["uris"], max_prompt_length=12)
    with client(stack["dpo"]) as c:
        job = run_job(c, req)
        logs = "\n".join(c.get(f"/jobs/{req['job_id']}/logs", params={"tail": 0}).json()["logs"])
    assert "with 1 earlier adapter(s) merged" in logs
    m = job["metrics"]
    assert m["max_prompt_length"] == 12
    assert_margin_rose(m)
    out = Path(job["output_uri"].removeprefix("file://"))
    # The DPO adapter points at the SFT output, which points at the tiny model: a chain a later job can follow.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == sft_uri


def test_refusals_come_in_one_error_body(stack, tiny_model: Path) -> None:
    """SFT-format data (peeked at request time), an impossible prompt length and an unknown method: one 422."""
    uris = stack["uris"]
    with client(stack["dpo"]) as c:
        bad = dpo_request(str(tiny_model), uris, max_prompt_length=128)
        bad["datasets"][0]["source"] = uris["sft_train"]
        r = c.post("/train", json=bad)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "unprocessable" and body["status_code"] == 422
        detail = " | ".join(body["detail"])
        assert "datasets[0] (train.jsonl line 1): this is SFT data, but this backend trains DPO" in detail
        assert "max_prompt_length (128) must be below max_sequence_length (128)" in detail
        assert c.get(f"/jobs/{bad['job_id']}").status_code == 404  # nothing was persisted

        # the SFT service refuses preference data the same way
    with client(stack["hf"]) as c:
        wrong = training_request(str(tiny_model), uris["dpo_train"])
        r = c.post("/train", json=wrong)
        assert r.status_code == 422 and "this is DPO data, but this backend trains SFT" in r.text, r.text


@pytest.mark.slow
def test_bad_rows_past_the_first_fail_the_job_as_invalid_input(stack, tiny_model: Path) -> None:
    """Only the first row is peeked at; the job checks every row and names the line it cannot use."""
    root: Path = stack["root"]  # type: ignore[assignment]
    mixed = root / "datasets" / "mixed.jsonl"
    rows = (REPO / "examples" / "dpo" / "train.jsonl").read_text().splitlines()[:5]
    rows.insert(3, json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}))
    mixed.write_text("\n".join(rows) + "\n")
    req = dpo_request(str(tiny_model), stack["uris"])
    req["datasets"][0]["source"] = mixed.as_uri()
    with client(stack["dpo"]) as c:
        assert c.post("/train", json=req).status_code == 202
        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in TERMINAL, timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job
    assert "mixed.jsonl line 4" in job["error"]["message"] and "'prompt', 'chosen' and 'rejected'" in job["error"]["message"]


def test_info_and_no_torch_in_the_service(stack) -> None:
    with client(stack["dpo"]) as c:
        info = c.get("/info").json()
    assert info["backend"] == "dpo" and info["training_types"] == ["dpo"] and info["available"], info
    assert set(info["methods"]) == {"lora", "qlora", "full"}
    code = "import sys, services.dpo.app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_prompt_truncation_keeps_the_end_of_the_prompt() -> None:
    """TRL 1.16's DPOConfig has no max_prompt_length: our collator left-truncates prompts before TRL's."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from common.train.dpo import PromptTruncatingCollator

    collate = PromptTruncatingCollator(DataCollatorForPreference(pad_token_id=0, max_length=6), max_prompt_length=3)
    batch = collate([{"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [6, 7], "rejected_ids": [8, 9, 10, 11]}])
    assert batch["input_ids"].tolist() == [[3, 4, 5, 6, 7, 0], [3, 4, 5, 8, 9, 10]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
