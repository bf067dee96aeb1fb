"""Supervised fine-tuning, the objective of the HuggingFace and Unsloth backends.

The job's steps are ``common.train.recipe``'s; this module adds what SFT does its own way:
``to_sft_config()`` maps the request onto TRL's ``SFTConfig`` (the shared arguments plus
``max_length`` and the assistant-only loss), the eval loss is measured before and after
training so every job reports what it learned, and nothing runs per step beyond what TRL
itself does (throughput is benchmarked against a plain TRL script).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.schemas import TrainingRequest
from common.train import recipe
from common.train.data import DatasetError, load_sft_datasets
from common.train.reporting import ProgressReporter, progress_callback

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
    from trl import SFTConfig, SFTTrainer

CHAT_FORMATS = frozenset({"messages", "conversational_prompt_completion"})


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


def to_sft_config(
    request: TrainingRequest,
    output_dir: Path,
    *,
    dataset_format: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    has_eval: bool = True,
) -> SFTConfig:
    """The one mapping from ``tuning_parameters`` onto TRL's ``SFTConfig``."""
    from trl import SFTConfig

    return SFTConfig(
        **recipe.training_args(request, output_dir, has_eval=has_eval),
        max_length=request.tuning_parameters.max_sequence_length,
        assistant_only_loss=wants_assistant_only_loss(request, dataset_format, tokenizer),
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
    measured = recipe.train_with_evaluations(trainer, reporter, _eval_loss, lambda log: {"eval_loss": log["eval_loss"]})
    return {
        **measured.metrics,
        "eval_loss_before": measured.before.get("eval_loss"),
        "eval_loss": measured.after.get("eval_loss"),
    }


def _eval_loss(trainer: Trainer) -> dict[str, float]:
    loss = trainer.evaluate().get("eval_loss")
    return {"eval_loss": float(loss)} if loss is not None else {}


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


OBJECTIVE = recipe.Objective(load_data=load_sft_datasets, unit="rows", run=run_sft)
