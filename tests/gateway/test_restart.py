"""State survives a gateway restart (SQLite and PostgreSQL): datasets, finetunes, keys, and a
validation that the shutdown interrupted, which the next gateway finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.gateway.conftest import GATEWAY
from tests.gateway.helpers import SFT_TRAIN, client, create_finetune, ok, upload_dataset, validate, wait_finetune
from tests.utils.server import REPO, Server

ROW = json.dumps({"messages": [{"role": "user", "content": "reverse: one two three four five six seven"},
                               {"role": "assistant", "content": "seven six five four three two one"}]}) + "\n"


def test_state_survives_a_gateway_restart(gateway_env: dict[str, str], tiny_model: Path, tmp_path: Path) -> None:
    big = (ROW * (16 * 1024 * 1024 // len(ROW))).encode()  # ~16 MB: validation outlives the shutdown
    gw = Server(GATEWAY, gateway_env, log_path=tmp_path / "gw.log").start()
    try:
        with client(gw) as c:
            ds = upload_dataset(c, SFT_TRAIN)
            done = create_finetune(c, str(tiny_model), epochs=2)
            ok(c.put(f"/v1/finetune/{done}", json={"training_dataset_id": ds["id"]}))
            before = validate(c, done)
            assert before["status"] == "pk_dataset_validation_successfull"
            big_ds = upload_dataset(c, big, name="big.jsonl")
            busy = create_finetune(c, str(tiny_model))
            ok(c.put(f"/v1/finetune/{busy}", json={"training_dataset_id": big_ds["id"]}))
            assert ok(c.post(f"/v1/finetune/{busy}/validation/start"))["status"] == "pk_dataset_validation_in_progress"
        gw.stop()
        gw = Server(GATEWAY, gateway_env, log_path=tmp_path / "gw.log").start()
        with client(gw) as c:
            after = ok(c.get(f"/v1/finetune/{done}"))
            assert after == before
            assert ok(c.get(f"/v1/datasets/{ds['id']}"))["rows"] == 320
            assert {ds["id"], big_ds["id"]} <= {d["id"] for d in ok(c.get("/v1/datasets"))}
            ft = wait_finetune(c, busy, lambda f: f["status"] != "pk_dataset_validation_in_progress", timeout=120)
            assert ft["status"] == "pk_dataset_validation_successfull", ft
            assert ft["validation"]["training"]["rows"] == len(big) // len(ROW)
            messages = [e["message"] for e in ok(c.get(f"/v1/finetune/{busy}/events"))]
            assert any("interrupted by a gateway shutdown" in m for m in messages), messages
    finally:
        gw.stop()
    # the seeded admin key was stored once, not once per start
    out = subprocess.run([sys.executable, "-m", "common.cli", "keys", "list", "--json"], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, **gateway_env})
    assert [json.loads(line)["name"] for line in out.stdout.splitlines()].count("admin") == 1
