"""What serving adds to generation: tokens/s and time to first token of streamed chat completions
through the gateway (API key, model resolution, proxy) and the inference service (API process, worker
process, adapter-capable engine) against a plain ``model.generate`` loop in this process, on the same
model, prompts and greedy settings, in one run. Target: >= 0.9x the plain loop's tokens/s.

    .venv/bin/python bench/inference_overhead.py [--model trainyard/tiny-llama] [--max-tokens 64] [--rounds 3]
    .venv/bin/python bench/inference_overhead.py --model HuggingFaceTB/SmolLM2-135M-Instruct

Starts the inference service and the gateway as uvicorn subprocesses on free ports (SQLite, temp dirs)
and streams with the official ``openai`` SDK. Both sides run one request at a time, alternating (which
side goes first alternates too), each warmed up first (the first request loads the model). Both sides
generate greedily with the same token limit and, by default, the same minimum (``min_tokens``, so a
model that would end its turn early still produces answers of equal length on both sides). Tokens are
what each side generated (``usage`` for the served side); time runs from the request (the plain side:
from the chat template) to the last token, and both sides decode text as each token comes. The plain side runs with the worker's OpenMP wait policy
(idle threads sleep), so neither side's idle threads spin on the CPUs the other needs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in the inference worker; read when torch loads

from tests.utils.server import Server  # noqa: E402  (the test suite's real-subprocess server)

KEY = "ty_bench_admin_key_0123456789abcdef"
PROMPTS = [
    "Write a short story about a cat who learns to sail.",
    "Explain how a bicycle works to a child.",
    "List some things to pack for a week of hiking in the mountains.",
    "Describe the city you would most like to visit and why.",
]


def local_runner(model_id: str, max_tokens: int, min_tokens: int):  # type: ignore[no-untyped-def]
    """A plain transformers loop on the same weights: returns run(prompt) -> (ttft_s, total_s, tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from common.catalog import resolve
    from common.settings import get_settings

    entry = resolve(model_id, get_settings())
    path, extra = (entry.path, {"gguf_file": entry.gguf_file} if entry and entry.gguf_file else {}) if entry else (model_id, {})
    tok = AutoTokenizer.from_pretrained(path, **extra)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra).eval()

    class TextSoFar(BaseStreamer):
        """Text as it is generated (a plain streaming loop decodes each token, as the worker does)."""

        def __init__(self) -> None:
            self.ids: list[int] | None = None  # None until the prompt, which comes first, has passed
            self.first, self.text = 0.0, ""

        def put(self, value: torch.Tensor) -> None:
            if self.ids is None:
                self.ids = []
                return
            if not self.ids:
                self.first = time.perf_counter()
            self.ids.extend(value.reshape(-1).tolist())
            self.text = tok.decode(self.ids, skip_special_tokens=True)

        def end(self) -> None:
            pass

    def run(prompt: str) -> tuple[float, float, int]:
        start = time.perf_counter()
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        streamer = TextSoFar()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 min_new_tokens=min_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id, streamer=streamer)
        total = time.perf_counter() - start
        return streamer.first - start, total, int(out.shape[1] - ids.shape[1])

    return run


def served_runner(gateway_url: str, model_id: str, max_tokens: int, min_tokens: int):  # type: ignore[no-untyped-def]
    import openai

    sdk = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=KEY, max_retries=0, timeout=600)

    def run(prompt: str) -> tuple[float, float, int]:
        start = time.perf_counter()
        first, tokens = 0.0, 0
        stream = sdk.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"min_tokens": min_tokens},
        )
        for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return first - start, time.perf_counter() - start, tokens

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="trainyard/tiny-llama", help="a catalog id (default: the tiny model)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=None,
                        help="fewest tokens per answer on both sides (default: --max-tokens; 0: let answers end early)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    args = parser.parse_args()
    min_tokens = args.max_tokens if args.min_tokens is None else args.min_tokens

    if args.model == "trainyard/tiny-llama":
        from common.train.tiny_model import build_tiny_model

        build_tiny_model(REPO / "var" / "models" / "tiny-llama")
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        root = Path(tmp)
        env = {
            "TRAINYARD_DATABASE_URL": f"sqlite:///{root / 'trainyard.db'}",
            "TRAINYARD_STORAGE_ROOT": str(root),
            "TRAINYARD_ADMIN_API_KEY": KEY,
            "TRAINYARD_INFERENCE_CACHE_DIR": str(root / "cache"),
        }
        inf = Server("services.inference.app:app", env, log_path=root / "inference.log").start()
        gw = Server("gateway.app:app", {**env, "TRAINYARD_SERVICE_URL_INFERENCE": inf.url}, log_path=root / "gateway.log")
        try:
            gw.start()
            sides = {"plain generate": local_runner(args.model, args.max_tokens, min_tokens),
                     "through gateway": served_runner(gw.url, args.model, args.max_tokens, min_tokens)}
            for run in sides.values():
                run(PROMPTS[0])  # loads the model (in the worker, for the served side) and warms it
            results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
            for i in range(args.rounds):
                for j, prompt in enumerate(PROMPTS):
                    order = list(sides) if (i + j) % 2 == 0 else list(reversed(sides))
                    for name in order:
                        results[name].append(sides[name](prompt))
        finally:
            gw.stop()
            inf.stop()

    summary = {}
    print(f"model {args.model}, {len(PROMPTS)} prompts x {args.rounds} rounds, greedy, "
          f"max_tokens {args.max_tokens}, min_tokens {min_tokens}")
    for name, runs in results.items():
        tokens = sum(r[2] for r in runs)
        seconds = sum(r[1] for r in runs)
        ttft = statistics.median(r[0] for r in runs) * 1000
        summary[name] = (tokens / seconds, ttft)
        print(f"  {name:<16} {tokens:>5} tokens in {seconds:6.2f}s  {tokens / seconds:8.1f} tokens/s  "
              f"time to first token p50 {ttft:7.1f} ms")
    ratio = summary["through gateway"][0] / summary["plain generate"][0]
    # Each prompt ran on both sides back to back: the median of those pairs' ratios shrugs off load
    # that came and went on a shared machine.
    pairs = [(g[2] / g[1]) / (p[2] / p[1]) for p, g in zip(results["plain generate"], results["through gateway"], strict=True)]
    print(f"tokens/s ratio (gateway / plain): {ratio:.2f}x overall, {statistics.median(pairs):.2f}x median of "
          f"{len(pairs)} back-to-back pairs  (target >= 0.9x)")
    print(f"time to first token added: {summary['through gateway'][1] - summary['plain generate'][1]:+.1f} ms")


if __name__ == "__main__":
    main()
