"""The supervised fine-tuning recipe shared by the HuggingFace and Unsloth backends.

A backend loads the model its own way; from there the recipe is the same:
one ``to_sft_config()`` maps the request onto TRL's ``SFTConfig``, the eval loss
is measured before and after training so every job reports what it learned, and
nothing runs per step beyond what TRL itself does (throughput is benchmarked
against a plain TRL script).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.schemas import Precision, TrainingRequest
from common.train.data import DatasetError
from common.train.models import resolve_precision
from common.train.reporting import ProgressReporter, progress_callback

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTConfig, SFTTrainer

MAX_PER_DEVICE_BATCH = 8
CHAT_FORMATS = frozenset({"messages", "conversational_prompt_completion"})


def batch_sizes(request: TrainingRequest) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation) that reach ``batch_size`` per optimizer step."""
    tp = request.tuning_parameters
    per_device = tp.per_device_batch_size or min(tp.batch_size, MAX_PER_DEVICE_BATCH)
    return per_device, max(1, math.ceil(tp.batch_size / per_device))


def wants_assistant_only_loss(
    request: TrainingRequest, dataset_format: str, tokenizer: PreTrainedTokenizerBase | None
) -> bool:
    """Chat rows with a template TRL can mask (``{% generation %}`` markers, or one TRL knows how to patch)."""
    if not request.tuning_parameters.assistant_only_loss or dataset_format != "messages" or tokenizer is None:
        return False
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except (ValueError, TypeError):
        return False


def checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Gradient checkpointing under the name this transformers takes: ``activation_checkpointing``
    since 5.2x (``gradient_checkpointing`` is a deprecated alias that warns there); unsloth's pinned
    5.17 (the Unsloth environment and the training image) knows only ``gradient_checkpointing``."""
    from dataclasses import fields

    from transformers import TrainingArguments

    name = "activation_checkpointing"
    if name not in {f.name for f in fields(TrainingArguments)}:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def to_sft_config(
    request: TrainingRequest,
    output_dir: Path,
    *,
    dataset_format: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    has_eval: bool = True,
) -> SFTConfig:
    """The one mapping from ``tuning_parameters`` onto TRL's ``SFTConfig``."""
    import torch
    from trl import SFTConfig

    tp = request.tuning_parameters
    per_device, accumulation = batch_sizes(request)
    precision = resolve_precision(request.customization.precision)
    eval_strategy = "no" if not has_eval else "steps" if tp.eval_steps else "epoch"
    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=tp.learning_rate,
        num_train_epochs=tp.num_epochs,
        max_steps=tp.max_steps or -1,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        warmup_steps=tp.warmup_ratio,  # transformers 5: a float in [0, 1) is the ratio (no warmup_ratio)
        lr_scheduler_type=tp.lr_scheduler_type,
        weight_decay=tp.weight_decay,
        **checkpointing_args(tp.gradient_checkpointing),
        max_length=tp.max_sequence_length,
        logging_steps=tp.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=tp.eval_steps,
        save_strategy="steps" if tp.save_steps else "no",
        save_steps=tp.save_steps or 500,
        assistant_only_loss=wants_assistant_only_loss(request, dataset_format, tokenizer),
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        seed=tp.seed,
        # TRL already counts tokens per step (``num_tokens``); a second count would be extra work.
        include_num_input_tokens_seen="no",
        # Our callback prints one line per log step; tqdm bars would only clutter the job log.
        disable_tqdm=True,
    )


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    request: TrainingRequest,
    output_dir: Path,
    reporter: ProgressReporter,
    *,
    dataset_format: str,
    peft_config: PeftConfig | None = None,
) -> SFTTrainer:
    """An ``SFTTrainer`` wired to the progress reporter; applies ``peft_config`` if given.

    Raises:
        DatasetError: chat rows without a chat template, or rows emptied by truncation.
    """
    from transformers import PrinterCallback
    from trl import SFTTrainer

    if dataset_format in CHAT_FORMATS and not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            f"the data is in '{dataset_format}' (chat) format but the model's tokenizer has no chat template; "
            "use a chat model, or 'prompt'/'completion' strings or 'text' rows"
        )
    args = to_sft_config(
        request, output_dir, dataset_format=dataset_format, tokenizer=tokenizer, has_eval=eval_dataset is not None
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(reporter)],
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout would duplicate our progress lines
    _check_not_emptied(trainer, len(train_dataset), len(eval_dataset) if eval_dataset is not None else 0, args.max_length)
    return trainer


def _check_not_emptied(trainer: SFTTrainer, train_rows: int, eval_rows: int, max_length: int | None) -> None:
    """TRL drops rows whose trainable tokens were all truncated away; an emptied split is the user's to fix.

    Raises:
        DatasetError: no train (or validation) row has a token left to learn from.
    """
    for split, before, ds in (("train", train_rows, trainer.train_dataset), ("validation", eval_rows, trainer.eval_dataset)):
        if ds is not None and before and len(ds) == 0:
            raise DatasetError(
                f"{split}: none of the {before} rows has a trainable token left after truncation to "
                f"max_sequence_length={max_length}; raise max_sequence_length or shorten the prompts"
            )


def train_and_evaluate(trainer: SFTTrainer, reporter: ProgressReporter) -> dict[str, Any]:
    """Eval before, train, eval after; the metrics every SFT job reports."""
    eval_before = _eval_loss(trainer) if trainer.eval_dataset is not None else None
    history_start = len(trainer.state.log_history)
    result = trainer.train()
    state = trainer.state
    eval_after = None
    if trainer.eval_dataset is not None and not reporter.cancel_requested.is_set():
        last = final_eval_log(state)
        eval_after = last["eval_loss"] if last else _eval_loss(trainer)
    runtime, train_seconds = train_timing(result, state, history_start)
    tokens = _tokens_seen(trainer)
    return {
        "train_loss": float(result.training_loss),
        "eval_loss_before": eval_before,
        "eval_loss": eval_after,
        "tokens_seen": tokens,
        "runtime_seconds": round(runtime, 3),
        "tokens_per_second": round(tokens / train_seconds, 1) if tokens and train_seconds else None,
        "steps": state.global_step,
        "train_rows": len(trainer.train_dataset),
        "eval_rows": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
    }


def final_eval_log(state: Any) -> dict[str, Any] | None:
    """The evaluation logged at the final step (epoch-end or eval_steps), if any: no need to pay twice."""
    return next(
        (h for h in reversed(state.log_history) if "eval_loss" in h and h.get("step") == state.global_step), None
    )


def train_timing(result: Any, state: Any, history_start: int) -> tuple[float, float]:
    """(train_runtime, seconds spent training): evaluations inside train() are not training,
    so throughput leaves them out."""
    runtime = float(result.metrics.get("train_runtime") or 0.0)
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in state.log_history[history_start:])
    return runtime, max(runtime - eval_seconds, 0.0)


def _eval_loss(trainer: SFTTrainer) -> float | None:
    loss = trainer.evaluate().get("eval_loss")
    return float(loss) if loss is not None else None


def _tokens_seen(trainer: SFTTrainer) -> int | None:
    """Non-padding tokens trained on, from TRL's own per-step count."""
    count = getattr(trainer, "_total_train_tokens", None)
    if count is None:
        count = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)
    return int(count) if count else (trainer.state.num_input_tokens_seen or None)


def run_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    request: TrainingRequest,
    output_dir: Path,
    reporter: ProgressReporter,
    *,
    dataset_format: str,
    peft_config: PeftConfig | None = None,
) -> tuple[SFTTrainer, dict[str, Any]]:
    """Build the trainer, train and evaluate; returns the trainer (for saving) and the metrics."""
    trainer = build_trainer(
        model, tokenizer, train_dataset, eval_dataset, request, output_dir, reporter,
        dataset_format=dataset_format, peft_config=peft_config,
    )
    return trainer, train_and_evaluate(trainer, reporter)


def save(trainer: SFTTrainer, tokenizer: PreTrainedTokenizerBase, output_dir: Path) -> None:
    """The adapter (PEFT) or the full model, plus the tokenizer, so ``output_dir`` loads on its own."""
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
