"""Throughput of a training job through the service vs a plain TRL script, same run.

Both sides train the same tiny model on the same data for the same steps with the
same LoRA and SFTConfig knobs. Training-loop tokens/s (TRL's own token count over
``train_runtime``) is the number the service must not lose (target ratio >= 0.97);
end-to-end wall time (process start, model load, eval, upload) is printed beside it.

    .venv/bin/python bench/trainer_overhead.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.utils.server import Server, wait_for  # noqa: E402

PLAIN = r'''
import json, sys, time
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = load_dataset("json", data_files=data, split="train")
args = SFTConfig(output_dir=out, learning_rate=3e-3, max_steps=steps, per_device_train_batch_size=8,
                 max_length=128, logging_steps=5, save_strategy="no", eval_strategy="no", use_cpu=True,
                 report_to=[], seed=42, assistant_only_loss=True, disable_tqdm=True,
                 include_num_input_tokens_seen="no", bf16=False,
                 activation_checkpointing=False)  # TRL turns checkpointing on by default; the request's default is off
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
res = trainer.train()
tokens = next(h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h)
trainer.save_model(out)
print(json.dumps({"tokens": tokens, "train_runtime": res.metrics["train_runtime"],
                  "wall": time.perf_counter() - t0}))
'''


def plain_run(model: Path, data: Path, steps: int) -> dict:
    out = tempfile.mkdtemp(prefix="plain-")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(model), str(data), str(steps), out],
                          capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"tps": r["tokens"] / r["train_runtime"], "wall": wall}


def service_run(c: httpx.Client, model: Path, data_uri: str, steps: int, i: int) -> dict:
    job = {
        "job_id": f"bench-{os.getpid()}-{i}",
        "base_model": {"model_name": str(model)},
        "customization": {"method": "lora", "rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "precision": "fp32",
                          "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "datasets": [{"source": data_uri}],
        "tuning_parameters": {"learning_rate": 3e-3, "batch_size": 8, "max_steps": steps, "logging_steps": 5,
                              "max_sequence_length": 128, "validation_split": 0.0},
    }
    t0 = time.perf_counter()
    r = c.post("/train", json=job)
    r.raise_for_status()
    done = wait_for(c, f"/jobs/{job['job_id']}", lambda j: j["status"] in ("completed", "failed"), timeout=600,
                    interval=0.1)
    wall = time.perf_counter() - t0
    if done["status"] != "completed":
        raise SystemExit(f"service job failed: {done['error']}")
    m = done["metrics"]
    return {"tps": m["tokens_seen"] / m["runtime_seconds"], "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "1"),
                    help="torch threads on both sides (1 keeps OpenMP from thrashing on a shared CPU)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = args.threads  # inherited by the plain script and by the service's jobs

    from common.train.tiny_model import build_tiny_model

    model = build_tiny_model(REPO / "var" / "models" / "tiny-llama")
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    root = work / "objects"
    (root / "data").mkdir(parents=True)
    data = root / "data" / "train.jsonl"
    shutil.copy(REPO / "examples" / "sft" / "train.jsonl", data)
    env = {"TRAINYARD_DATABASE_URL": f"sqlite:///{work / 'db.sqlite'}", "TRAINYARD_STORAGE_ROOT": str(root),
           "TRAINYARD_LOG_DIR": str(work / "logs")}
    plain, service = [], []
    with Server("services.huggingface.app:app", env, log_path=work / "service.log") as srv, \
            srv.client(timeout=30) as c:
        plain_run(model, data, 5)  # warm the page cache for both sides
        for i in range(args.rounds):  # interleaved so drift hits both sides alike
            plain.append(plain_run(model, data, args.steps))
            service.append(service_run(c, model, data.as_uri(), args.steps, i))
    p_tps = statistics.median(r["tps"] for r in plain)
    s_tps = statistics.median(r["tps"] for r in service)
    p_wall = statistics.median(r["wall"] for r in plain)
    s_wall = statistics.median(r["wall"] for r in service)
    print(f"steps={args.steps} rounds={args.rounds} threads={args.threads} (medians)")
    print(f"{'':24}{'tokens/s (train loop)':>24}{'wall s (end to end)':>22}")
    print(f"{'plain TRL script':24}{p_tps:>24.0f}{p_wall:>22.2f}")
    print(f"{'through the service':24}{s_tps:>24.0f}{s_wall:>22.2f}")
    print(f"ratio service/plain tokens/s: {s_tps / p_tps:.3f}  (target >= 0.97)")
    print(f"end-to-end wall ratio plain/service: {p_wall / s_wall:.3f} (service also evaluates before/after and uploads)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
