"""GPU check: the three SFT backends on one small Llama, same data, same steps; speed, memory, loss.

    bash bench/gpu_check.sh                 # on the GPU machine: installs carried wheels, then runs this
    python bench/gpu_check.py --cpu-smoke   # here: the same code path on a tiny model for a few CPU steps

What it does, top to bottom:

1. builds a Llama-architecture model with random weights (``--size gpu``: ~220M parameters, vocab
   32k; ``--size tiny`` for the CPU smoke) and a byte-level BPE tokenizer trained locally in a
   second (``common.train.tiny_model.train_tokenizer``): nothing is downloaded;
2. writes one chat dataset (word reversal, long rows) and its held-out split;
3. runs each configuration as the real training program would (``common.train.__main__.run`` on
   a job spec, so the backends' own code trains), one fresh subprocess each so peak-memory numbers
   do not mix: HuggingFace LoRA (bf16), HuggingFace QLoRA (nf4, bf16 compute), Unsloth LoRA (bf16);
4. prints tokens/s, peak GPU memory (peak RSS on the CPU), train loss and eval loss before/after
   for each, and the Unsloth/HuggingFace LoRA speed ratio; ``--json`` writes the same as JSON.

All configurations train the same LoRA (rank 16, alpha 32, the seven Llama projections, no
dropout, no gradient checkpointing unless ``--gradient-checkpointing``) on the same rows, for the
same number of optimizer steps with the same batch. Budget on one H100: a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Llama shapes. "gpu": 16 layers of width 1024 with a 32k vocabulary, ~220M parameters (tied embeddings).
SIZES: dict[str, dict[str, int]] = {
    "gpu": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512),
}
CONFIGS: dict[str, dict[str, Any]] = {
    "hf-lora": {"backend": "huggingface", "method": "lora", "label": "HF LoRA"},
    "hf-qlora": {"backend": "huggingface", "method": "qlora", "label": "HF QLoRA (nf4)"},
    "unsloth": {"backend": "unsloth", "method": "lora", "label": "Unsloth LoRA"},
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny model, a few steps, fp32, on the CPU: the same code path, for tests and a dry run")
    p.add_argument("--size", choices=sorted(SIZES), help="model size (default: gpu; tiny with --cpu-smoke)")
    p.add_argument("--steps", type=int, help="optimizer steps per configuration (default 60; 3 with --cpu-smoke)")
    p.add_argument("--batch-size", type=int, help="rows per step (default 8; 4 with --cpu-smoke)")
    p.add_argument("--seq-len", type=int, help="max_sequence_length (default 512; 128 with --cpu-smoke)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of {', '.join(CONFIGS)} (default: all)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="turn it on for every configuration")
    p.add_argument("--unsloth-python", default="",
                   help="interpreter for the Unsloth run (default: .venv-unsloth/bin/python if it exists, else this one)")
    p.add_argument("--work-dir", type=Path, default=None, help="model, data and outputs (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds one configuration may take")
    p.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)  # internal: run one spec in this process
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = {"size": ("tiny", "gpu"), "steps": (3, 60), "batch_size": (4, 8), "seq_len": (128, 512)}
    for name, (for_smoke, for_gpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, for_smoke if smoke else for_gpu)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configuration(s): {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 16:
        p.error("--steps and --batch-size must be >= 1, --seq-len >= 16")
    return args


# --------------------------------------------------------------------------- model and data


def build_model(out: Path, size: str, *, dtype: str = "float32", seed: int = 1234) -> int:
    """A random-weight Llama with a locally trained tokenizer; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.train.tiny_model import make_corpus, train_tokenizer

    texts, chats = make_corpus(random.Random(seed), n_paragraphs=300, n_chats=0)
    tokenizer = train_tokenizer(texts)
    shape = dict(SIZES[size])
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **shape,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.model_max_length = shape["max_position_embeddings"]
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def reversal_row(rng: random.Random, n_words: int) -> dict[str, Any]:
    from common.train.tiny_model import WORDS  # words the tokenizer's corpus uses

    words = [rng.choice(WORDS) for _ in range(n_words)]
    return {"messages": [
        {"role": "user", "content": "reverse: " + " ".join(words)},
        {"role": "assistant", "content": " ".join(reversed(words))},
    ]}


def write_data(out: Path, *, rows: int, eval_rows: int, seq_len: int, seed: int = 7) -> tuple[Path, Path]:
    """Chat rows sized to fill most of ``seq_len`` (a word is ~2 tokens of this tokenizer, twice per row)."""
    rng = random.Random(seed)
    n_words = max(2, seq_len // 5)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count in (("train.jsonl", rows), ("validation.jsonl", eval_rows)):
        path = out / name
        path.write_text("".join(json.dumps(reversal_row(rng, rng.randint(n_words // 2, n_words))) + "\n"
                                for _ in range(count)))
        paths.append(path)
    return paths[0], paths[1]


def job_spec(name: str, model: Path, train: Path, validation: Path, output: Path, args: argparse.Namespace,
             *, cuda: bool) -> dict[str, Any]:
    """The job spec a trainer service would write for this configuration (same shape as common.jobs.submit)."""
    cfg = CONFIGS[name]
    precision = "bf16" if cuda else "fp32"
    request = {
        "job_id": name,
        "base_model": {"model_name": str(model)},
        "customization": {
            "method": cfg["method"], "rank": 16, "lora_alpha": 32, "lora_dropout": 0.0,
            "target_modules": PROJECTIONS, "precision": precision,
            "qlora": {"use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16" if cuda else "float32"},
        },
        "datasets": [{"source": train.as_uri()}, {"source": validation.as_uri(), "split": "validation"}],
        "tuning_parameters": {
            "learning_rate": 2e-4, "batch_size": args.batch_size, "max_steps": args.steps,
            "logging_steps": max(1, args.steps // 6), "max_sequence_length": args.seq_len,
            "gradient_checkpointing": args.gradient_checkpointing, "warmup_ratio": 0.0, "seed": 42,
        },
    }
    return {"job_id": name, "backend": cfg["backend"], "request": request, "output_uri": output.as_uri()}


# --------------------------------------------------------------------------- one configuration (subprocess)


def run_one(spec_path: Path, result_path: Path) -> None:
    """Train one spec in this process with the training program's own recipe; write metrics + peak memory."""
    spec = json.loads(spec_path.read_text())
    if spec["backend"] == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # noqa: F401  - before transformers, as unsloth requires

    import resource

    import torch

    from common.train.__main__ import run
    from common.train.reporting import ProgressReporter

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    metrics = run(spec_path.as_uri(), {}, ProgressReporter(None, enabled=True))
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"metrics": metrics, "peak_bytes": int(peak), "peak_kind": "gpu" if cuda else "rss", "wall_seconds": wall,
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    result_path.write_text(json.dumps(result, indent=2))


def unsloth_python(configured: str) -> str:
    if configured:
        return configured
    venv = REPO / ".venv-unsloth" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def launch(name: str, spec: dict[str, Any], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    python = unsloth_python(args.unsloth_python) if spec["backend"] == "unsloth" else sys.executable
    env = {**os.environ, "TRAINYARD_STORAGE_ROOT": str(work), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.cpu_smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    log = work / f"{name}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        try:
            proc = subprocess.run(
                [python, str(Path(__file__).resolve()), "--run-one", str(spec_path), "--result", str(result_path)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    elapsed = time.perf_counter() - started
    if rc != 0 or not result_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        why = "timed out" if rc == -1 else f"exit {rc}"
        return {"name": name, "ok": False, "error": why, "log_tail": tail, "seconds": elapsed}
    return {"name": name, "ok": True, "seconds": elapsed, **json.loads(result_path.read_text())}


# --------------------------------------------------------------------------- report


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {r["name"]: r for r in results if r.get("ok")}
    summary: dict[str, Any] = {}

    def tps(name: str) -> float | None:
        return (by_name.get(name) or {}).get("metrics", {}).get("tokens_per_second")

    if tps("unsloth") and tps("hf-lora"):
        summary["unsloth_vs_hf_lora_speed"] = round(tps("unsloth") / tps("hf-lora"), 3)
    if "hf-qlora" in by_name and "hf-lora" in by_name:
        summary["qlora_vs_lora_peak_memory"] = round(by_name["hf-qlora"]["peak_bytes"] / by_name["hf-lora"]["peak_bytes"], 3)
    return summary


def table(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    head = f"{'configuration':<20} {'tokens/s':>10} {'peak mem GiB':>13} {'train loss':>11} {'eval loss before→after':>24} {'job s':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        label = CONFIGS[r["name"]]["label"]
        if not r.get("ok"):
            lines.append(f"{label:<20} FAILED ({r['error']}): " + " | ".join(r.get("log_tail", [])[-3:]))
            continue
        m = r["metrics"]
        mem = r["peak_bytes"] / 2**30
        kind = "" if r["peak_kind"] == "gpu" else " (RSS)"
        before, after = m.get("eval_loss_before"), m.get("eval_loss")
        loss = f"{before:.4f} → {after:.4f}" if before is not None and after is not None else "n/a"
        lines.append(f"{label:<20} {m.get('tokens_per_second') or 0:>10.1f} {mem:>13.2f}{kind} {m['train_loss']:>11.4f} "
                     f"{loss:>24} {r['seconds']:>7.1f}")
    if "unsloth_vs_hf_lora_speed" in summary:
        lines.append(f"Unsloth / HF LoRA speed (tokens/s): {summary['unsloth_vs_hf_lora_speed']:.3f}x")
    if "qlora_vs_lora_peak_memory" in summary:
        lines.append(f"HF QLoRA / HF LoRA peak memory: {summary['qlora_vs_lora_peak_memory']:.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_one:
        run_one(args.run_one, args.result)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("gpu_check: no CUDA device here; use --cpu-smoke for the CPU dry run", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    work = args.work_dir or Path(__import__("tempfile").mkdtemp(prefix="trainyard-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model_dir = work / "model"
        params = build_model(model_dir, args.size, dtype="bfloat16" if cuda else "float32")
        rows = max(args.steps * args.batch_size, 64)
        train, validation = write_data(work / "data", rows=rows, eval_rows=max(16, args.batch_size * 4), seq_len=args.seq_len)
        print(f"gpu_check on {device}: Llama {args.size} with {params / 1e6:.1f}M parameters (built in "
              f"{time.perf_counter() - t0:.1f}s); {args.steps} steps x batch {args.batch_size}, max length {args.seq_len}, "
              f"{'bf16' if cuda else 'fp32'}",
              flush=True)
        results = []
        for name in args.configs:
            spec = job_spec(name, model_dir, train, validation, work / "out" / name, args, cuda=cuda)
            result = launch(name, spec, work, args)
            status = "ok" if result["ok"] else f"FAILED ({result['error']})"
            print(f"  {CONFIGS[name]['label']}: {status} in {result['seconds']:.1f}s", flush=True)
            results.append(result)
        summary = summarize(results)
        print(table(results, summary))
        if args.json:
            args.json.write_text(json.dumps({"device": device, "parameters": params, "steps": args.steps,
                                             "batch_size": args.batch_size, "seq_len": args.seq_len,
                                             "results": results, "summary": summary}, indent=2, default=str))
        return 0 if all(r["ok"] for r in results) else 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
