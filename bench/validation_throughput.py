"""Throughput and peak memory of dataset validation on a generated JSONL file (1 GB by default).

    .venv/bin/python bench/validation_throughput.py [--size-mb 1024] [--tokens [--tokenizer DIR]]

Contenders, each in a fresh process so its peak RSS is its own, all on the same file in one run:

* ``naive``      ``for line in file: json.loads(line)``: parses, checks nothing (the baseline)
* ``validate``   common.validation.validate_stream: parse + every format check, errors by line
* ``validate+tokens``  with ``--tokens``: the same plus token counts with the tokenizer

Prints MB/s, seconds, rows and peak RSS, and the ratio to the baseline. The machine's load
average is printed too: on a shared machine, compare ratios, not absolute speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the", "a", "cat", "dog", "reverse", "word", "list", "of", "some", "tokens", "alpha", "beta", "gamma", "delta",
    "apple", "pear", "river", "stone", "cloud", "green", "quick", "brown", "fox", "jumps", "over", "lazy", "sheep",
    "boat", "house", "light", "dark", "small", "large",
)


def generate(path: Path, size_mb: int, seed: int = 0) -> int:
    """Chat rows of varied length (system/user/assistant turns), written until ``size_mb`` MB."""
    rng = random.Random(seed)
    rows = []
    for _ in range(20_000):
        turns = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            turns.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 80)))})
            turns.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 160)))})
        rows.append(json.dumps({"messages": turns}))
    block = ("\n".join(rows) + "\n").encode()
    target = size_mb * 1_000_000
    written = 0
    with path.open("wb") as fh:
        while written < target:
            chunk = block[: target - written] if target - written < len(block) else block
            if chunk is not block:  # end on a whole row
                chunk = chunk[: chunk.rfind(b"\n") + 1] or block[: block.find(b"\n") + 1]
            fh.write(chunk)
            written += len(chunk)
    return written


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's RSS (VmRSS) or high-water RSS (VmHWM). /proc's VmHWM starts afresh at exec;
    ru_maxrss would carry the parent's peak over."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name: str, path: Path, tokenizer: str | None) -> dict:
    """Runs in the child process."""
    if name == "naive":
        start_rss = _rss_mb("VmRSS")
        start = time.perf_counter()
        rows = 0
        with path.open("rb") as fh:
            for line in fh:
                json.loads(line)
                rows += 1
        extra = {}
    else:
        from common.schemas import TrainingType
        from common.validation import load_tokenizer, validate_stream

        tok = None
        if name == "validate+tokens":
            tok, note = load_tokenizer(tokenizer or "")
            if tok is None:
                raise SystemExit(note)
        start_rss = _rss_mb("VmRSS")
        start = time.perf_counter()  # imports and tokenizer loading are not part of the throughput
        with path.open("rb") as fh:
            report = validate_stream(fh, TrainingType.sft, tokenizer=tok, tokenizer_name=tokenizer or "")
        rows = report.rows
        assert report.valid, report.errors[:3]
        extra = {"tokens": report.tokens.model_dump() if report.tokens else None}
    seconds = time.perf_counter() - start
    return {"name": name, "seconds": seconds, "rows": rows, "peak_rss_mb": _rss_mb(), "start_rss_mb": start_rss, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--tokens", action="store_true", help="also validate with token counts (slow: tokenizing)")
    parser.add_argument("--tokenizer", default=str(REPO / "var" / "models" / "tiny-llama"),
                        help="model directory with tokenizer.json, for --tokens")
    parser.add_argument("--rounds", type=int, default=2, help="runs per contender (best counts; machines are noisy)")
    parser.add_argument("--file", type=Path, help="validate this file instead of generating one")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child[0], Path(args.child[1]), args.tokenizer)))
        return

    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        path = args.file or Path(tmp) / "data.jsonl"
        if not args.file:
            t = time.perf_counter()
            generate(path, args.size_mb)
            print(f"generated {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s", flush=True)
        size_mb = path.stat().st_size / 1e6
        names = ["naive", "validate"]
        if args.tokens:
            names.append("validate+tokens")
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):  # alternate contenders; keep each one's best round
            for name in names:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, str(path), "--tokenizer", args.tokenizer],
                    check=True, capture_output=True, text=True, cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  round {round_ + 1}  {name:<16} {size_mb / r['seconds']:7.1f} MB/s  {r['seconds']:7.1f}s  "
                      f"{r['rows']:>10,} rows  peak RSS {r['peak_rss_mb']:7.1f} MB", flush=True)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = {**r, "peak_rss_mb": max(r["peak_rss_mb"], best.get(name, r)["peak_rss_mb"])}
        results = [best[n] for n in names]
    base = results[0]["seconds"]
    print(f"\nbest of {args.rounds}: " + ", ".join(f"{r['name']} {size_mb / r['seconds']:.1f} MB/s" for r in results))
    print(f"file {size_mb:.0f} MB, {results[0]['rows']:,} rows; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    for r in results[1:]:
        print(f"{r['name']}: {base / r['seconds']:.2f}x the naive json.loads baseline's throughput; peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, {r['peak_rss_mb'] - r['start_rss_mb']:.0f} MB above the process after its "
              f"imports (baseline {results[0]['peak_rss_mb']:.0f} MB, "
              f"+{results[0]['peak_rss_mb'] - results[0]['start_rss_mb']:.0f} MB)")
        if r.get("tokens"):
            t = r["tokens"]
            print(f"  tokens: {t['total']:,} total, max {t['max']}, {t['counted_rows']:,} rows tokenized, "
                  f"{t['estimated_rows']:,} estimated")


if __name__ == "__main__":
    main()
