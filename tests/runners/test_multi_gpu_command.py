"""The command a Job runs for resources.gpus > 1, run for real: torchrun with two processes.

No GPU here, so the two processes train on the CPU (torch's gloo backend); on a node they are one
per GPU. What matters is that the exact command the runner builds starts the training program
under torchrun, that the processes train together, and that only rank 0 reports and uploads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.runners.k8s_spec import build_job
from common.settings import Settings
from tests.utils.server import REPO


@pytest.mark.slow
def test_torchrun_command_trains_with_two_processes_and_rank_0_reports(tiny_model: Path, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    (objects / "train.jsonl").write_bytes((REPO / "examples" / "sft" / "train.jsonl").read_bytes())
    spec = {
        "job_id": "multi", "backend": "huggingface",
        "request": {
            "base_model": {"model_name": str(tiny_model)},
            "customization": {"method": "lora", "rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "precision": "fp32"},
            "datasets": [{"source": (objects / "train.jsonl").as_uri()}],
            "tuning_parameters": {"max_steps": 4, "batch_size": 8, "learning_rate": 0.003,
                                  "max_sequence_length": 128, "logging_steps": 2},
        },
        "output_uri": (objects / "out").as_uri(), "log_uri": (objects / "logs").as_uri(),
    }
    (objects / "spec.json").write_text(json.dumps(spec))
    row = {"id": "multi", "backend": "huggingface", "spec_uri": (objects / "spec.json").as_uri(), "labels": {},
           "request": {"resources": {"gpus": 2, "cpus": 2, "memory_gb": 8}}}
    command = build_job(Settings(), row, {}).spec.template.spec.containers[0].command
    assert command[0] == "torchrun" and "--nproc_per_node=2" in command
    command[0] = str(Path(sys.executable).parent / "torchrun")  # the image has it on PATH
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINYARD_STORAGE_ROOT": str(objects),
           "TRAINYARD_WORK_DIR": str(tmp_path / "work")}
    env.pop("TRAINYARD_PROGRESS_URL", None)
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sum(line.startswith("[started]") for line in lines) == 1, "only rank 0 reports"
    assert sum(line.startswith("[metrics]") for line in lines) == 1
    metrics = json.loads((objects / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (objects / "out" / "adapter_model.safetensors").exists()
