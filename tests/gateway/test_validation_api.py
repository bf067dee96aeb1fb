"""Background validation through the API: errors by line, the start gate, re-uploads, DPO rows."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.gateway.conftest import SHARED_MAX_ERRORS, Tenant
from tests.gateway.helpers import (
    DPO_TRAIN,
    SFT_TRAIN,
    client,
    create_finetune,
    err,
    ok,
    upload_dataset,
    validate,
)
from tests.utils.server import Server

GOOD = json.dumps({"messages": [{"role": "user", "content": "reverse: a b"}, {"role": "assistant", "content": "b a"}]})
BAD_FILE = "\n".join([
    GOOD,                                                                       # 1
    "{not json",                                                                # 2
    GOOD,                                                                       # 3
    json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),       # 4
    "",                                                                         # 5 (blank: skipped)
    json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),  # 6
    json.dumps({"text": "a different format"}),                                 # 7
    json.dumps(["not", "an", "object"]),                                        # 8
    json.dumps({"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]}),  # 9
]) + "\n"


def test_validation_errors_are_reported_by_line_and_gate_the_start(tenant: Tenant, tiny_model: Path) -> None:
    with tenant.client() as c:
        ds = upload_dataset(c, BAD_FILE.encode())
        finetune_id = create_finetune(c, str(tiny_model), max_sequence_length=64)
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        ft = validate(c, finetune_id)
        assert ft["status"] == "pk_dataset_validation_failed"
        report = ft["validation"]["training"]
        assert not report["valid"] and report["rows"] == 6 and report["errors_total"] == 6
        by_line = {e["line"]: e for e in report["errors"]}
        assert sorted(by_line) == [2, 4, 6, 7, 8, 9]
        assert by_line[2]["message"].startswith("invalid JSON")
        assert by_line[4]["field"] == "messages[0].role" and "end with an assistant" in by_line[4]["message"]
        assert by_line[6]["field"] == "messages[0].role" and "'robot'" in by_line[6]["message"]
        assert "format" in by_line[7]["message"] and "line 1" in by_line[7]["message"]
        assert "JSON object" in by_line[8]["message"]
        assert "max_sequence_length 64" in by_line[9]["message"]  # counted with the tiny model's tokenizer
        assert report["tokens"]["over_limit_rows"] == 1 and report["tokens"]["limit"] == 64
        dataset = ok(c.get(f"/v1/datasets/{ds['id']}"))
        assert dataset["validation_status"] == "pk_dataset_validation_failed" and dataset["rows"] == 6

        body = err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)
        assert "pk_dataset_validation_failed" in body["detail"]

        # a fixed file uploaded to the same dataset resets the finetune; validating again passes
        fresh = ok(c.post(f"/v1/datasets/{ds['id']}/signed_url"))
        ok(httpx.put(fresh["signed_url"], content=SFT_TRAIN.read_bytes()))
        ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
        assert ft["status"] == "created" and ft["validation"] is None
        ft = validate(c, finetune_id)
        assert ft["status"] == "pk_dataset_validation_successfull", ft
        assert ft["validation"]["training"]["rows"] == 320


def test_error_lists_are_capped_but_every_error_is_counted(tenant: Tenant, tiny_model: Path) -> None:
    with tenant.client() as c:
        ds = upload_dataset(c, ("{broken\n" * 500).encode())
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        report = validate(c, finetune_id)["validation"]["training"]
        assert report["errors_total"] == 500 and report["errors_truncated"]
        assert [e["line"] for e in report["errors"]] == list(range(1, SHARED_MAX_ERRORS + 1))


def test_dpo_finetunes_need_preference_rows(tenant: Tenant, tiny_model: Path) -> None:
    with tenant.client() as c:
        sft = upload_dataset(c, SFT_TRAIN)
        dpo = upload_dataset(c, DPO_TRAIN)
        finetune_id = create_finetune(c, str(tiny_model), provider="dpo")
        ft = ok(c.get(f"/v1/finetune/{finetune_id}"))
        assert ft["service"] == "dpo" and ft["training_type"] == "dpo"
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": sft["id"]}))
        report = validate(c, finetune_id)["validation"]["training"]
        assert report["errors_total"] == 320 and report["errors"][0]["line"] == 1 and report["errors_truncated"]
        assert "'prompt', 'chosen' and 'rejected'" in report["errors"][0]["message"]
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": dpo["id"]}))
        ft = validate(c, finetune_id)
        assert ft["status"] == "pk_dataset_validation_successfull"
        assert ft["validation"]["training"]["format"] == "preference"
        # the type of a dataset must fit its role
        body = err(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": dpo["id"],
                                                              "validation_dataset_id": sft["id"]}), 422)
        assert "type 'training', not 'validation'" in body["detail"]


def test_mistakes_get_messages_that_say_what_to_do(tenant: Tenant, tiny_model: Path) -> None:
    rows = [json.loads(line) for line in SFT_TRAIN.read_text().splitlines()[:40]]
    with tenant.client() as c:
        # a JSON array, pretty-printed: one error that says JSONL, not one per line
        ds = upload_dataset(c, json.dumps(rows, indent=2).encode(), name="data.json")
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        report = validate(c, finetune_id)["validation"]["training"]
        assert report["errors_total"] == 1, report
        assert report["errors"][0]["message"].startswith("the file must be JSONL: one JSON object per line")
        assert "the file must be JSONL" in err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)["detail"]

        # preference rows in an SFT finetune: validation and start both name the provider to use
        ds = upload_dataset(c, DPO_TRAIN)
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        report = validate(c, finetune_id)["validation"]["training"]
        assert "create the finetune with provider 'dpo'" in report["errors"][0]["message"]
        detail = err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)["detail"]
        assert "validation failed: training dataset line 1:" in detail and "provider 'dpo'" in detail, detail

        # Alpaca rows are accepted: instruction + input from the user, output from the assistant
        alpaca = "".join(json.dumps({"instruction": r["messages"][0]["content"], "input": "",
                                     "output": r["messages"][-1]["content"]}) + "\n" for r in rows)
        ds = upload_dataset(c, alpaca.encode())
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        ft = validate(c, finetune_id)
        assert ft["status"] == "pk_dataset_validation_successfull", ft
        assert ft["validation"]["training"]["format"] == "messages" and ft["validation"]["training"]["rows"] == 40

        # a near-miss field name: the error names the field meant, on the gateway's routes alike
        body = {"name": "t", "provider": "huggingface", "model": str(tiny_model), "hyperparameters": {"n_epochs": 2}}
        (issue,) = err(c.post("/v1/finetune", json=body), 422, "validation_error")["detail"]
        assert issue["loc"] == ["body", "hyperparameters", "n_epochs"]
        assert issue["msg"] == "unknown field 'n_epochs'; did you mean 'epochs'?" and issue["type"] == "extra_forbidden"
        (issue,) = err(c.post("/v1/datasets", json={"name": "d", "type": "training", "nmae": "x"}), 422)["detail"]
        assert issue["msg"].startswith("unknown field 'nmae'; did you mean 'name'?"), issue


def test_start_while_validating_says_to_wait(gateway: Server, tiny_model: Path) -> None:
    row = json.dumps({"messages": [{"role": "user", "content": "reverse: one two three"},
                                   {"role": "assistant", "content": "three two one"}]}) + "\n"
    with client(gateway) as c:
        ds = upload_dataset(c, (row * (16 * 1024 * 1024 // len(row))).encode())  # ~16 MB: validation takes a while
        finetune_id = create_finetune(c, str(tiny_model))
        ok(c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": ds["id"]}))
        assert ok(c.post(f"/v1/finetune/{finetune_id}/validation/start"))["status"] == "pk_dataset_validation_in_progress"
        detail = err(c.post(f"/v1/finetune/{finetune_id}/start"), 409)["detail"]
        assert "wait for validation to finish (status pk_dataset_validation_in_progress" in detail, detail
        assert "pk_dataset_validation_successfull" in detail
