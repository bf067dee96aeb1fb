"""The DPO recipe: TRL's ``DPOTrainer`` on prompt/chosen/rejected rows, LoRA by default.

A recipe that reads top to bottom (after trl/scripts/dpo.py): ``to_dpo_config()`` maps the
request onto TRL's ``DPOConfig`` in one place, the held-out split is evaluated before and
after training so every job reports what it learned (reward margin and reward accuracy),
and the adapter is saved exactly like an SFT job's.

The reference model: with LoRA/QLoRA none is loaded. TRL disables the adapter to get the
reference log-probs, so the reference is the base exactly as loaded, an earlier SFT job's
merged output included (the SFT -> DPO pipeline). A full fine-tune keeps a frozen copy of the
starting weights as its reference.

``max_prompt_length``: TRL 1.16's ``DPOConfig`` has only ``max_length`` (whole sequence,
``keep_start``). We keep the contract's knob by left-truncating each tokenized prompt to its
last ``max_prompt_length`` tokens in the collator, so the words nearest the answer survive,
then TRL's own collator cuts the sequence to ``max_length``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.schemas import Method, Precision, TrainingRequest
from common.train.data import DatasetError
from common.train.models import resolve_precision
from common.train.reporting import ProgressReporter, progress_callback
from common.train.sft import batch_sizes, checkpointing_args, final_eval_log, train_timing

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import DPOConfig, DPOTrainer

CHAT_FORMATS = frozenset({"conversational_preference"})
# TRL's eval metric names -> ours in metrics.json (``_before`` is added for the evaluation before training).
REWARD_METRICS = {
    "eval_rewards/margins": "reward_margin",
    "eval_rewards/accuracies": "reward_accuracy",
    "eval_rewards/chosen": "reward_chosen",
    "eval_rewards/rejected": "reward_rejected",
    "eval_loss": "eval_loss",
}


def to_dpo_config(request: TrainingRequest, output_dir: Path, *, has_eval: bool = True) -> DPOConfig:
    """The one mapping from ``tuning_parameters`` onto TRL's ``DPOConfig``.

    TRL's DPO defaults differ from ``TrainingArguments`` (bf16 on, gradient checkpointing on,
    lr 1e-6): every one of them is set here from the request, so a job does what it asked for.
    """
    import torch
    from trl import DPOConfig

    tp = request.tuning_parameters
    per_device, accumulation = batch_sizes(request)
    precision = resolve_precision(request.customization.precision)
    eval_strategy = "no" if not has_eval else "steps" if tp.eval_steps else "epoch"
    return DPOConfig(
        output_dir=str(output_dir),
        beta=tp.beta,
        loss_type=[tp.loss_type],
        # With max_prompt_length the collator truncates (see the module docstring); TRL would otherwise
        # drop every row whose untruncated prompt alone fills max_length before we got to shorten it.
        max_length=None if tp.max_prompt_length else tp.max_sequence_length,
        learning_rate=tp.learning_rate,
        num_train_epochs=tp.num_epochs,
        max_steps=tp.max_steps or -1,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        warmup_steps=tp.warmup_ratio,  # transformers 5: a float in [0, 1) is the ratio
        lr_scheduler_type=tp.lr_scheduler_type,
        weight_decay=tp.weight_decay,
        **checkpointing_args(tp.gradient_checkpointing),
        logging_steps=tp.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=tp.eval_steps,
        save_strategy="steps" if tp.save_steps else "no",
        save_steps=tp.save_steps or 500,
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        seed=tp.seed,
        include_num_input_tokens_seen="no",  # TRL counts tokens itself (num_tokens)
        disable_tqdm=True,
    )


class PromptTruncatingCollator:
    """Keeps the last ``max_prompt_length`` prompt tokens of each row, then runs TRL's collator."""

    def __init__(self, collator: Any, max_prompt_length: int) -> None:
        self.collator = collator
        self.max_prompt_length = max_prompt_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = self.max_prompt_length
        return self.collator([{**ex, "prompt_ids": ex["prompt_ids"][-n:]} for ex in examples])


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
) -> DPOTrainer:
    """A ``DPOTrainer`` wired to the progress reporter.

    Raises:
        DatasetError: chat rows without a chat template, or a split emptied by truncation.
    """
    from transformers import PrinterCallback
    from trl import DPOTrainer

    if dataset_format in CHAT_FORMATS and not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            "the preference data holds chat messages but the model's tokenizer has no chat template; "
            "use a chat model, or plain-string 'prompt'/'chosen'/'rejected' rows"
        )
    tp = request.tuning_parameters
    args = to_dpo_config(request, output_dir, has_eval=eval_dataset is not None)
    ref_model = None
    if request.customization.method == Method.full:
        # TRL would reload the reference from config._name_or_path, which is the wrong model when the base
        # was an SFT adapter merged in memory. A frozen copy of the starting weights is the right one.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(reporter)],
    )
    trainer.remove_callback(PrinterCallback)
    if tp.max_prompt_length:
        trainer.data_collator.max_length = tp.max_sequence_length
        trainer.data_collator = PromptTruncatingCollator(trainer.data_collator, tp.max_prompt_length)
    for split, before, ds in (
        ("train", len(train_dataset), trainer.train_dataset),
        ("validation", len(eval_dataset) if eval_dataset is not None else 0, trainer.eval_dataset),
    ):
        if ds is not None and before and len(ds) == 0:
            raise DatasetError(
                f"{split}: every one of the {before} prompts fills max_sequence_length={tp.max_sequence_length} "
                "tokens, leaving no answer token; raise max_sequence_length or set max_prompt_length"
            )
    return trainer


def evaluate(trainer: DPOTrainer) -> dict[str, float]:
    """Loss and reward statistics on the held-out split, under our names."""
    return _ours(trainer.evaluate())


def _ours(raw: dict[str, Any]) -> dict[str, float]:
    """TRL's eval metric names mapped onto ours, missing ones dropped."""
    return {ours: float(raw[theirs]) for theirs, ours in REWARD_METRICS.items() if raw.get(theirs) is not None}


def train_and_evaluate(trainer: DPOTrainer, reporter: ProgressReporter) -> dict[str, Any]:
    """Evaluate, train, evaluate: reward margin and accuracy at start and end."""
    has_eval = trainer.eval_dataset is not None
    before = evaluate(trainer) if has_eval else {}
    if before:
        reporter.log(
            f"before training: reward margin {before.get('reward_margin', 0.0):.4f}, "
            f"reward accuracy {before.get('reward_accuracy', 0.0):.3f} on the held-out split"
        )
    history_start = len(trainer.state.log_history)
    result = trainer.train()
    state = trainer.state
    after: dict[str, float] = {}
    if has_eval and not reporter.cancel_requested.is_set():
        last = final_eval_log(state)
        after = _ours(last) if last else evaluate(trainer)
    runtime, train_seconds = train_timing(result, state, history_start)
    tokens = getattr(trainer, "_total_train_tokens", None) or None
    metrics: dict[str, Any] = {
        "train_loss": float(result.training_loss),
        "tokens_seen": int(tokens) if tokens else None,
        "runtime_seconds": round(runtime, 3),
        "tokens_per_second": round(tokens / train_seconds, 1) if tokens and train_seconds else None,
        "steps": state.global_step,
        "train_rows": len(trainer.train_dataset),
        "eval_rows": len(trainer.eval_dataset) if has_eval else 0,
    }
    for name in REWARD_METRICS.values():
        metrics[f"{name}_before"] = before.get(name)
        metrics[name] = after.get(name)
    return metrics


def run_dpo(
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
) -> tuple[DPOTrainer, dict[str, Any]]:
    """Build the trainer, train and evaluate; returns the trainer (for saving) and the metrics."""
    trainer = build_trainer(
        model, tokenizer, train_dataset, eval_dataset, request, output_dir, reporter,
        dataset_format=dataset_format, peft_config=peft_config,
    )
    return trainer, train_and_evaluate(trainer, reporter)
