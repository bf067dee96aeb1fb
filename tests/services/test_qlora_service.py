"""QLoRA through the HuggingFace service over real HTTP: the base loads in 4 bits with bitsandbytes
(nf4, double quantization; its CPU backend here, CUDA in a cluster), LoRA trains on top.

Where bitsandbytes cannot quantize to 4 bits in the job environment, the service refuses
``method: qlora`` with a 422 naming why, and still takes other methods.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.factories import training_request
from tests.utils.server import Server, wait_for

APP = "services.huggingface.app:app"
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def env(storage_root: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "TRAINYARD_DATABASE_URL": f"sqlite:///{tmp_path / 'trainyard.db'}",
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture
def service(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    with Server(APP, env, log_path=tmp_path / "service.log") as srv:
        yield srv


def qlora_request(model: str, sample_uris: dict[str, str], **tuning: object) -> dict:
    req = training_request(model, sample_uris["sft_train"], validation_uri=sample_uris["sft_validation"],
                           max_steps=20, learning_rate=5e-3, **tuning)
    req["customization"] |= {
        "method": "qlora", "precision": "bf16",  # bf16 compute falls back to fp32 on this CPU
        "qlora": {"use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4"},
    }
    return req


@pytest.mark.slow
def test_qlora_job_learns_over_http(service: Server, tiny_model: Path, sample_uris: dict[str, str]) -> None:
    req = qlora_request(str(tiny_model), sample_uris)
    with service.client(timeout=120) as c:
        r = c.post("/train", json=req)
        assert r.status_code == 202, r.text
        job = wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in TERMINAL, timeout=300)
        logs = c.get(f"/jobs/{req['job_id']}/logs", params={"tail": 30}).json()["logs"]
    assert job["status"] == "completed", (job, logs)
    m = job["metrics"]
    assert m["method"] == "qlora" and m["steps"] == 20
    assert m["eval_loss"] < m["eval_loss_before"], m

    out = Path(job["output_uri"].removeprefix("file://"))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    # The adapter applies to the 4-bit base it was trained on, and to the full-precision base.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=nf4)
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = PeftModel.from_pretrained(base, out)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_qlora_is_refused_where_bitsandbytes_4bit_cannot_run(
    env: dict[str, str], tmp_path: Path, tiny_model: Path, sample_uris: dict[str, str]
) -> None:
    """Jobs pointed at a bare interpreter (a fresh venv without torch or bitsandbytes): the probe fails there."""
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {**env, "TRAINYARD_PYTHON_EXECUTABLE": str(bare / "bin" / "python")}
    with Server(APP, env, log_path=tmp_path / "bare.log") as srv, srv.client(timeout=60) as c:
        r = c.post("/train", json=qlora_request(str(tiny_model), sample_uris))
        assert r.status_code == 422, r.text
        [problem] = r.json()["detail"]
        assert problem.startswith("customization.method 'qlora' needs bitsandbytes 4-bit, which cannot run where")
        assert "No module named" in problem
        # LoRA is not affected by the probe (it is the job's own business whether torch is there)
        lora = training_request(str(tiny_model), sample_uris["sft_train"])
        assert c.post("/train", json=lora).status_code == 202


def test_qlora_probe_passes_here_and_is_skipped_on_kubernetes() -> None:
    from common.train.probes import qlora_problem

    assert qlora_problem("local") is None  # bitsandbytes' CPU backend quantizes to nf4 in this environment
    assert qlora_problem("kubernetes", "/nonexistent/python") is None  # the training image carries it
    reason = qlora_problem("local", "/nonexistent/python")
    assert reason is not None and "does not exist" in reason
