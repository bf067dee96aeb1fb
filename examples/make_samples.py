"""Generate the sample datasets in examples/sft and examples/dpo (deterministic; output is committed).

Why this task: list reversal ("reverse: cat, dog, bird" -> "bird, dog, cat") has one right answer
that is checkable by eye and plausible wrong answers for DPO (original order, one swap, a dropped
word). The tiny model from common/train/tiny_model.py has seen these words and the chat format in
pre-training, but never this task nor comma-separated answers, so a short LoRA run has something
clear to learn (bench/lora_learns.py measures it).

    python examples/make_samples.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261128
# fmt: off
WORDS = [
    "cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "fox", "wolf", "bear", "apple", "pear",
    "plum", "lemon", "grape", "bread", "book", "lamp", "chair", "cup", "box", "hat", "boat", "car", "ball", "key",
    "red", "blue", "green", "yellow", "black", "white", "brown", "pink",
]
# fmt: on


def prompt_and_answer(rng: random.Random, seen: set[str]) -> tuple[str, list[str], str]:
    """A prompt not generated before, so validation rows never repeat training rows."""
    while (prompt := f"reverse: {', '.join(words := rng.sample(WORDS, rng.randint(2, 5)))}") in seen:
        pass
    seen.add(prompt)
    return prompt, words, ", ".join(reversed(words))


def wrong_answer(rng: random.Random, words: list[str]) -> str:
    """A plausible mistake: the order unchanged, one adjacent pair swapped, or a word dropped.

    Each differs from the answer because the sampled words are distinct and there are at least two.
    """
    answer = list(reversed(words))
    mistake = rng.choice(["unchanged", "swap", "drop"])
    if mistake == "unchanged":
        wrong = list(words)
    elif mistake == "swap":
        i = rng.randrange(len(answer) - 1)
        wrong = answer[:i] + [answer[i + 1], answer[i]] + answer[i + 2 :]
    else:
        wrong = answer[: (i := rng.randrange(len(answer)))] + answer[i + 1 :]
    return ", ".join(wrong)


def sft_row(rng: random.Random, seen: set[str]) -> dict[str, list[dict[str, str]]]:
    prompt, _, answer = prompt_and_answer(rng, seen)
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def dpo_row(rng: random.Random, seen: set[str]) -> dict[str, str]:
    """Plain-string preference rows: TRL joins prompt + answer as they are, so the prompt ends with a
    newline; without a separator "... boat" + "boat sheep" would read "boatboat sheep" and the
    tokenizer would merge across the boundary."""
    prompt, words, answer = prompt_and_answer(rng, seen)
    return {"prompt": prompt + "\n", "chosen": answer, "rejected": wrong_answer(rng, words)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path.relative_to(HERE.parent)}")


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    write_jsonl(HERE / "sft/train.jsonl", [sft_row(rng, seen) for _ in range(320)])
    write_jsonl(HERE / "sft/validation.jsonl", [sft_row(rng, seen) for _ in range(40)])
    write_jsonl(HERE / "dpo/train.jsonl", [dpo_row(rng, seen) for _ in range(320)])
    write_jsonl(HERE / "dpo/validation.jsonl", [dpo_row(rng, seen) for _ in range(40)])


if __name__ == "__main__":
    main()
