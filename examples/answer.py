"""Greedy answers of a base model, and of base + a finetune's adapter, to chat prompts.

    python examples/answer.py MODEL [--adapter URI] < prompts.json > answers.json

``prompts.json``: a JSON list of chat message lists (each without the assistant's answer).
Output: ``{"base": [...]}``, plus ``"adapter": [...]`` with ``--adapter`` (the base is loaded once and
answers both ways). MODEL is a catalog id (``common.catalog``), a local directory or a hub id; the
adapter URI is a finetune's ``output_uri`` (file:// or s3://). This runs as its own process so
the demo that calls it stays free of torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_NEW_TOKENS = 12
BATCH = 16


def load_base(model: str) -> tuple[Any, Any]:
    """Tokenizer and float32 model, from the catalog's files when ``model`` is a catalog id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.catalog import resolve
    from common.settings import get_settings

    entry = resolve(model, get_settings())
    path, extra = (entry.path, {"gguf_file": entry.gguf_file} if entry.gguf_file else {}) if entry else (model, {})
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra).eval()


def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[str]:
    """Greedy answers, in left-padded batches (a CPU answers a batch nearly as fast as one prompt)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), BATCH):
            texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                     for m in prompts[start:start + BATCH]]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            width = inputs["input_ids"].shape[1]
            answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--adapter", help="file:// or s3:// URI of a finetune's output (its adapter)")
    args = parser.parse_args()
    prompts = json.load(sys.stdin)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    started = time.monotonic()
    tokenizer, model = load_base(args.model)
    print(f"loaded {args.model} in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    result = {"base": generate(model, tokenizer, prompts)}
    if args.adapter:
        from peft import PeftModel

        from common.storage import ObjectStore

        with tempfile.TemporaryDirectory() as tmp:
            adapter_dir = Path(tmp) / "adapter"
            ObjectStore().download_prefix(args.adapter.rstrip("/"), adapter_dir)
            model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        result["adapter"] = generate(model, tokenizer, prompts)
    print(f"answered {len(prompts)} prompt(s) per model in {time.monotonic() - started:.1f}s",
          file=sys.stderr, flush=True)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
