"""examples/quickstart.sh, the script README.md shows, runs as written against a real stack (gateway,
the HuggingFace and DPO trainer services, the inference service) started here on free ports: the SFT
finetune learns the sample task, the DPO finetune on top of it completes, both models are listed, and
the chat completion answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ADMIN_KEY, gateway_settings
from tests.utils.server import REPO, Server

SCRIPT = REPO / "examples" / "quickstart.sh"


@pytest.mark.slow
def test_quickstart_script_runs_as_written(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "objects").mkdir()
    env = {**gateway_settings(f"sqlite:///{tmp_path / 'trainyard.db'}", tmp_path / "objects", tmp_path / "logs"),
           "TRAINYARD_INFERENCE_CACHE_DIR": str(tmp_path / "cache")}
    services = {name: Server(f"services.{name}.app:app", env, log_path=tmp_path / f"{name}.log")
                for name in ("huggingface", "dpo", "inference")}
    started: list[Server] = []
    try:
        for srv in services.values():
            started.append(srv.start())
        urls = {f"TRAINYARD_SERVICE_URL_{name.upper()}": srv.url for name, srv in services.items()}
        gateway = Server("gateway.app:app", {**env, **urls}, log_path=tmp_path / "gateway.log")
        started.append(gateway.start())

        run = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900,
            env={**os.environ, "TRAINYARD_URL": gateway.url, "TRAINYARD_KEY": ADMIN_KEY},
        )
        print(run.stdout)  # what a user sees (pytest -s)
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"

        sft_id, dpo_id = re.findall(r"^(?:SFT|DPO) finetune (ft-[0-9a-f]+):$", run.stdout, re.M)
        with httpx.Client(base_url=gateway.url, headers={"x-portkey-api-key": ADMIN_KEY}, timeout=60) as c:
            sft = c.get(f"/v1/finetune/{sft_id}").json()["data"]
            dpo = c.get(f"/v1/finetune/{dpo_id}").json()["data"]
        assert sft["status"] == dpo["status"] == "completed", (sft, dpo)
        before, after = sft["metrics"]["eval_loss_before"], sft["metrics"]["eval_loss"]
        assert after < 0.6 * before, f"the quickstart's SFT barely learns: eval loss {before} -> {after}"
        assert dpo["metrics"]["eval_loss"] < dpo["metrics"]["eval_loss_before"], dpo["metrics"]
        assert dpo["metrics"]["reward_accuracy"] > dpo["metrics"]["reward_accuracy_before"], dpo["metrics"]

        listed = run.stdout.split("models:\n", 1)[1].split("chat with", 1)[0].split()
        assert f"ft:{sft_id}" in listed and f"ft:{dpo_id}" in listed, run.stdout
        answer = run.stdout.rstrip("\n").rsplit("\n", 1)[-1]
        assert answer.strip() and not answer.startswith("chat with"), run.stdout
    finally:
        for srv in reversed(started):
            srv.stop()


def test_readme_shows_the_scripts_hyperparameters() -> None:
    """The README's excerpt of the script names the hyperparameters the script runs with."""
    script = SCRIPT.read_text()
    readme = (REPO / "README.md").read_text()
    ran = json.loads(re.search(r"SFT_HP='(\{.*?\})'", script, re.S).group(1))  # type: ignore[union-attr]
    shown = re.search(r'"hyperparameters": (\{[^}]*\})\}\'', readme)
    assert shown, "README.md's quickstart excerpt shows no hyperparameters"
    assert json.loads(shown.group(1)) == ran
    assert "examples/quickstart.sh" in readme
