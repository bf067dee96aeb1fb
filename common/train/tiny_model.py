"""Build a tiny Llama-style chat model locally, with no download: tokenizer, weights, chat template.

Why: tests, demos and the docker-compose stack need a real model that loads through
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` and fine-tunes in seconds on
a laptop CPU, and there is no model hub here. A randomly initialised model is a poor stand-in: LoRA
on it barely moves the loss (stack-notes, "How much a tiny random model can learn"), just as real
LoRA presumes a pretrained base. So the build also gives the model a short full pre-training on a
generated corpus of English-ish sentences and chat-formatted *sibling* tasks (repeat, first, last,
count, sort; space-separated words). It never sees the sample task in `examples/` (reversing a
comma-separated list), so LoRA SFT on that task has something clear to learn: the answer format,
which words, when to stop. A model this small does not learn to copy from its prompt in a few
hundred steps, so neither pre-training nor a short LoRA run teaches it the reversal itself
(bench/lora_learns.py measures all this).

    python -m common.train.tiny_model --out var/models/tiny-llama [--force]

The build is deterministic (seeded, one thread) and cached: a directory holding `config.json` and a
`.trainyard-built` marker with the current BUILD_VERSION is reused as is. Bump BUILD_VERSION whenever
anything here changes what gets built.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

# torch/transformers load inside the functions that need them, so a cache hit returns in well under a
# second instead of paying several seconds of imports (Makefile targets and tests call this often).
if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

BUILD_VERSION = "4"
MARKER = ".trainyard-built"
SEED = 1234

BOS, EOS, PAD = "<|begin_of_text|>", "<|end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB_SIZE = 1024

# Llama-3-like layout with one token per role. The assistant's content *and* its `<|end|>` sit inside
# {% generation %} so TRL's assistant_only_loss trains the model to stop; the newline after `<|end|>`
# stays outside, which is what TRL's end-of-turn check expects.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Sizes tuned with bench/lora_learns.py (numbers in its docstring): about 430k parameters, and a
# pre-training of ~30 CPU seconds that reaches loss ~2. Every linear layer is a multiple of 64 wide
# (head dim 32, key/value 64), as in real models, so bitsandbytes' 4-bit paths all take it
# (common/train/quant_shapes.py).
MODEL_KWARGS = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
PRETRAIN_STEPS = 150
PRETRAIN_BATCH = 16
PRETRAIN_SEQ_LEN = 128
PRETRAIN_LR = 6e-3

# --- corpus -------------------------------------------------------------------------------------
# fmt: off
NAMES = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Lena", "Omar", "Maria",
    "Noah", "Sara", "Tom", "Yuki", "Ravi",
]
ANIMALS = [
    "cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "fox", "wolf", "bear", "mouse", "frog",
    "owl", "lion", "tiger", "rabbit", "deer", "pig", "hen", "bee", "ant", "snake", "whale", "seal", "crow", "swan",
    "camel", "zebra",
]
THINGS = [
    "apple", "pear", "plum", "lemon", "grape", "bread", "cheese", "cake", "soup", "rice", "book", "lamp", "chair",
    "table", "cup", "box", "hat", "coat", "boat", "car", "ball", "key", "door", "stone", "tree", "flower", "shoe",
    "bag", "pen", "clock", "bell", "kite", "drum", "map", "ring", "rope", "sock", "spoon", "train", "bike",
    "window", "letter", "candle", "basket", "blanket", "bottle", "button", "garden", "ladder", "mirror", "pillow",
    "river", "road", "bridge", "tower",
]
COLORS = [
    "red", "blue", "green", "yellow", "black", "white", "brown", "pink", "gray", "orange", "purple", "silver",
]
ADJECTIVES = [
    "small", "big", "old", "young", "quiet", "happy", "tired", "little", "tall", "warm", "cold", "bright", "dark",
    "heavy", "light", "soft", "loud", "clean", "dirty", "new", "empty", "full", "round", "sharp", "strange",
    "lucky", "busy", "gentle", "brave",
]
PLACES = [
    "the river", "the market", "the garden", "the school", "the forest", "the farm", "the city", "the kitchen",
    "the park", "the hill", "the lake", "the station", "the library", "the beach", "the bakery", "the harbor",
    "the village", "the museum", "the bridge", "the field",
]
TIMES = [
    "in the morning", "at night", "every day", "on Sunday", "after lunch", "in winter", "in summer",
    "before dinner", "today", "yesterday", "last week", "at noon", "in the evening", "once a year",
    "all afternoon",
]
VERBS_T = [
    "saw", "found", "liked", "carried", "painted", "bought", "sold", "cleaned", "moved", "watched", "opened",
    "closed", "dropped", "lifted", "pushed", "pulled", "counted", "chased", "fed", "hid", "kept", "lost", "made",
    "read", "sent", "shared", "threw", "wanted",
]
VERBS_I = [
    "slept", "ran", "sang", "waited", "walked", "played", "worked", "rested", "laughed", "jumped", "danced",
    "cried", "smiled", "swam", "shouted", "whispered", "arrived", "left", "stayed",
]
REASONS = [
    "it was late", "the sun was warm", "the rain stopped", "the door was open", "everyone was hungry",
    "the road was long", "the music was loud", "it was a holiday",
]
# fmt: on
WORDS = ANIMALS + THINGS + COLORS


def _noun(rng: random.Random) -> str:
    noun = rng.choice(ANIMALS + THINGS)
    adj = rng.choice(["", "", rng.choice(COLORS), rng.choice(ADJECTIVES)])
    return f"{rng.choice(['the', 'a', 'the'])} {adj + ' ' if adj else ''}{noun}"


def _sentence(rng: random.Random) -> str:
    """One English-ish sentence from a handful of patterns: enough grammar for the model to learn."""
    who = rng.choice([rng.choice(NAMES), _noun(rng)])
    pattern = rng.randrange(9)
    if pattern == 0:
        s = f"{who} {rng.choice(VERBS_T)} {_noun(rng)} near {rng.choice(PLACES)}"
    elif pattern == 1:
        s = f"{who} {rng.choice(VERBS_I)} {rng.choice(['in', 'near', 'behind'])} {rng.choice(PLACES)} {rng.choice(TIMES)}"
    elif pattern == 2:
        s = f"{_noun(rng)} is {rng.choice(COLORS + ADJECTIVES)} and {rng.choice(COLORS + ADJECTIVES)}"
    elif pattern == 3:
        s = f"{rng.choice(TIMES)}, {who} {rng.choice(VERBS_T)} {_noun(rng)} and {_noun(rng)}"
    elif pattern == 4:
        s = f"there are {rng.randint(2, 99)} {rng.choice(ANIMALS)}s in {rng.choice(PLACES)}"
    elif pattern == 5:
        s = f"{who} {rng.choice(VERBS_I)} because {rng.choice(REASONS)}"
    elif pattern == 6:
        return f"Where is {_noun(rng)}? It is in {rng.choice(PLACES)}."
    elif pattern == 7:
        s = f"{who} {rng.choice(VERBS_T)} {_noun(rng)}, but {_noun(rng)} {rng.choice(VERBS_I)}"
    else:
        s = f"{who} said that {_noun(rng)} {rng.choice(VERBS_I)} {rng.choice(TIMES)}"
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!"])


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))


def _sibling_task(rng: random.Random) -> list[dict[str, str]]:
    """A chat exchange on a task *related* to the sample task but not it: teaches format, not answer."""
    words = rng.sample(WORDS, rng.randint(2, 6))
    task = rng.choice(["repeat", "first", "last", "count", "sort"])
    answer = {
        "repeat": " ".join(words),
        "first": words[0],
        "last": words[-1],
        "count": str(len(words)),
        "sort": " ".join(sorted(words)),
    }[task]
    messages = [{"role": "user", "content": f"{task}: {' '.join(words)}"}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": "You are a careful assistant."})
    if rng.random() < 0.2:
        messages += [{"role": "user", "content": _sentence(rng)}, {"role": "assistant", "content": _sentence(rng)}]
    return messages


def make_corpus(
    rng: random.Random, n_paragraphs: int = 2500, n_chats: int = 2500
) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Plain paragraphs and chat conversations, generated so the build needs no data download."""
    return [_paragraph(rng) for _ in range(n_paragraphs)], [_sibling_task(rng) for _ in range(n_chats)]


# --- tokenizer ----------------------------------------------------------------------------------
def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/Llama-3 style): any UTF-8 text encodes, so user datasets never hit <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which return_assistant_tokens_mask relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_KWARGS["max_position_embeddings"],
    )


# --- pre-training -------------------------------------------------------------------------------
def pretrain(model: LlamaForCausalLM, ids: torch.Tensor, seed: int) -> float:
    """Full pre-training on random windows of the packed corpus; returns the last smoothed loss."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = PRETRAIN_STEPS // 10

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (PRETRAIN_STEPS - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    smooth = float("nan")
    # One thread: ~10x faster than two when other processes share the two cores (OpenMP workers spin
    # and thrash), barely slower when they don't, and float sums come out the same on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for step in range(PRETRAIN_STEPS):
            starts = torch.randint(0, len(ids) - PRETRAIN_SEQ_LEN - 1, (PRETRAIN_BATCH,), generator=gen)
            batch = torch.stack([ids[s : s + PRETRAIN_SEQ_LEN] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            smooth = loss.item() if math.isnan(smooth) else 0.9 * smooth + 0.1 * loss.item()
            if step % 50 == 0 or step == PRETRAIN_STEPS - 1:
                log.info("pretrain step %d/%d loss %.3f", step, PRETRAIN_STEPS, smooth)
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return smooth


def _build(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    paragraphs, chats = make_corpus(rng)
    task_texts = [m["content"] for chat in chats for m in chat]
    tokenizer = train_tokenizer(paragraphs + task_texts)

    docs = paragraphs + [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    rng.shuffle(docs)
    # Plain paragraphs get BOS ... EOS so every document has the same frame as a chat.
    docs = [doc if doc.startswith(BOS) else BOS + doc + EOS for doc in docs]
    ids = torch.tensor([i for doc_ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in doc_ids])

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_KWARGS,
    )
    model = LlamaForCausalLM(config)
    t0, cpu0 = time.perf_counter(), time.process_time()
    loss = pretrain(model, ids, SEED)
    log.info(
        "pretrained %d params for %d steps on a %d-token corpus in %.1fs (%.1f CPU s), loss %.3f",
        model.num_parameters(),
        PRETRAIN_STEPS,
        len(ids),
        time.perf_counter() - t0,
        time.process_time() - cpu0,
        loss,
    )

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(BUILD_VERSION + "\n")


def is_built(out: Path) -> bool:
    """True when `out` holds a complete build of this BUILD_VERSION."""
    marker = out / MARKER
    return (out / "config.json").is_file() and marker.is_file() and marker.read_text().strip() == BUILD_VERSION


def build_tiny_model(out: Path, force: bool = False) -> Path:
    """Build the tiny model into `out` unless an up-to-date build is already there; return `out`.

    Builds into a sibling temp directory and renames it into place, so an interrupted build never
    leaves a directory that looks complete. Takes ~25 s of one CPU core; a cache hit takes milliseconds.
    """
    out = Path(out)
    if not force and is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private temp dir per call: parallel test workers may build the same `out` at once.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _build(tmp)
        # mkdtemp and safetensors create owner-only modes; containers running as another user mount it.
        for path in (tmp, *tmp.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if force or not is_built(out):  # unless another process finished the same build first
            shutil.rmtree(out, ignore_errors=True)
            try:
                tmp.rename(out)
            except OSError:
                if not is_built(out):  # lost a race to a build that is complete: fine; otherwise raise
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/models/tiny-llama"))
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    out = build_tiny_model(args.out, force=args.force)
    log.info("tiny model ready at %s (%.1fs)", out, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
