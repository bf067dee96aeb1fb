"""bench/gpu_check.py: its CPU-side pieces here (argument parsing, the model builder, the data, the
job specs, the report) and the whole script on the CPU (--cpu-smoke: the same code path, a tiny model,
three steps per backend). The real run needs a CUDA GPU and is skipped without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check
from tests.utils.server import REPO


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_arguments_default_to_the_gpu_run_and_shrink_for_the_smoke() -> None:
    gpu = gpu_check.parse_args([])
    assert (gpu.size, gpu.steps, gpu.batch_size, gpu.seq_len) == ("gpu", 60, 8, 512)
    assert gpu.configs == ["hf-lora", "hf-qlora", "unsloth"] and not gpu.gradient_checkpointing
    smoke = gpu_check.parse_args(["--cpu-smoke", "--configs", "unsloth,hf-lora", "--steps", "5"])
    assert (smoke.size, smoke.steps, smoke.batch_size, smoke.seq_len) == ("tiny", 5, 4, 128)
    assert smoke.configs == ["unsloth", "hf-lora"]
    for bad in (["--configs", "hf-lora,magic"], ["--steps", "0"], ["--seq-len", "4"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_the_gpu_model_is_a_small_llama() -> None:
    """~100-500M parameters, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**gpu_check.SIZES["gpu"], tie_word_embeddings=True))
    params = sum(p.numel() for p in model.parameters())
    assert 100e6 <= params <= 500e6, params


def test_builder_data_and_specs_make_valid_jobs(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.schemas import TrainingRequest
    from common.trainer import load_backend

    params = gpu_check.build_model(tmp_path / "model", "tiny")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) == params
    assert tok.chat_template and tok.pad_token is not None

    args = gpu_check.parse_args(["--cpu-smoke"])
    train, val = gpu_check.write_data(tmp_path / "data", rows=32, eval_rows=8, seq_len=args.seq_len)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) == 32 and len(val.read_text().splitlines()) == 8
    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]) for r in rows]
    assert max(lengths) <= args.seq_len and min(lengths) > 10, lengths

    for name, cfg in gpu_check.CONFIGS.items():
        spec = gpu_check.job_spec(name, tmp_path / "model", train, val, tmp_path / "out" / name, args, cuda=False)
        request = TrainingRequest.model_validate(spec["request"])
        assert spec["backend"] == cfg["backend"] and request.customization.method.value == cfg["method"]
        assert request.customization.target_modules == gpu_check.PROJECTIONS
        assert request.tuning_parameters.max_steps == args.steps
        if cfg["backend"] == "huggingface":  # the unsloth backend's checks need its environment (probed elsewhere)
            assert load_backend(cfg["backend"]).check(request, runner="local") == []


def test_report_table_and_ratio() -> None:
    ok = {"ok": True, "seconds": 10.0, "peak_kind": "gpu"}
    results = [
        {**ok, "name": "hf-lora", "peak_bytes": 4 * 2**30,
         "metrics": {"tokens_per_second": 1000.0, "train_loss": 2.0, "eval_loss_before": 3.0, "eval_loss": 2.5}},
        {**ok, "name": "hf-qlora", "peak_bytes": 2 * 2**30,
         "metrics": {"tokens_per_second": 700.0, "train_loss": 2.1, "eval_loss_before": 3.0, "eval_loss": 2.6}},
        {**ok, "name": "unsloth", "peak_bytes": 3 * 2**30,
         "metrics": {"tokens_per_second": 1500.0, "train_loss": 2.0, "eval_loss_before": 3.0, "eval_loss": 2.5}},
    ]
    summary = gpu_check.summarize(results)
    assert summary == {"unsloth_vs_hf_lora_speed": 1.5, "qlora_vs_lora_peak_memory": 0.5}
    text = gpu_check.table(results, summary)
    assert "Unsloth / HF LoRA speed (tokens/s): 1.500x" in text and "3.0000 → 2.5000" in text
    failed = gpu_check.table([{"name": "unsloth", "ok": False, "error": "exit 1", "log_tail": ["boom"]}], {})
    assert "FAILED (exit 1): boom" in failed


def test_carried_versions_come_from_the_locks() -> None:
    """The GPU check runs the versions of the training image, which .venv-unsloth shares (one environment)."""
    from locks.compile import LOCKS, pins

    script = (REPO / "bench" / "gpu_wheels.sh").read_text()
    assert "==" not in script.split("NAMES=(")[1].split(")")[0], "gpu_wheels.sh takes versions from the lock"
    names = script.split("NAMES=(")[1].split(")")[0].split()
    image, local = pins(LOCKS / "train-image.txt"), pins(LOCKS / "unsloth.txt")
    assert names and all(n in image for n in names)
    assert {n: image[n] for n in names} == {n: local[n] for n in names}
    venv = REPO / ".venv-unsloth" / "bin" / "python"
    if not venv.exists():
        pytest.skip("no .venv-unsloth to compare with (make unsloth-env)")
    code = "import json, importlib.metadata as m, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    installed = json.loads(subprocess.run([str(venv), "-c", code, *names], capture_output=True, text=True,
                                          check=True).stdout)
    assert {n: image[n] for n in names} == installed


@pytest.mark.slow
def test_cpu_smoke_runs_every_backend(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-smoke", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == ["hf-lora", "hf-qlora", "unsloth"]
    for r in report["results"]:
        assert r["ok"] and r["metrics"]["steps"] == 3 and r["metrics"]["tokens_per_second"] > 0, r
    assert report["results"][1]["metrics"]["method"] == "qlora"
    assert report["results"][2]["metrics"]["trainer"] == "unsloth"
    assert report["summary"]["unsloth_vs_hf_lora_speed"] > 0
    assert "Unsloth / HF LoRA speed" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (bench/gpu_check.sh runs the check on one)")
def test_gpu_check_on_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert all(r["ok"] and r["peak_kind"] == "gpu" for r in report["results"])
