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

from common.schemas import Method, TrainingRequest
from common.train import recipe
from common.train.data import DatasetError, load_preference_datasets
from common.train.reporting import ProgressReporter, progress_callback

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
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
    """The one mapping from ``tuning_parameters`` onto TRL's ``DPOConfig``: the shared arguments
    plus DPO's own (``beta``, ``loss_type``, ``max_length``)."""
    from trl import DPOConfig

    tp = request.tuning_parameters
    return DPOConfig(
        **recipe.training_args(request, output_dir, has_eval=has_eval),
        beta=tp.beta,
        loss_type=[tp.loss_type],
        # With max_prompt_length the collator truncates (see the module docstring); TRL would otherwise
        # drop every row whose untruncated prompt alone fills max_length before we got to shorten it.
        max_length=None if tp.max_prompt_length else tp.max_sequence_length,
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


def evaluate(trainer: Trainer) -> dict[str, float]:
    """Loss and reward statistics on the held-out split, under our names."""
    return _ours(trainer.evaluate())


def _ours(raw: dict[str, Any]) -> dict[str, float]:
    """TRL's eval metric names mapped onto ours, missing ones dropped."""
    return {ours: float(raw[theirs]) for theirs, ours in REWARD_METRICS.items() if raw.get(theirs) is not None}


def train_and_evaluate(trainer: DPOTrainer, reporter: ProgressReporter) -> dict[str, Any]:
    """Evaluate, train, evaluate: reward margin and accuracy at start and end."""

    def log_before(before: dict[str, float]) -> None:
        reporter.log(
            f"before training: reward margin {before.get('reward_margin', 0.0):.4f}, "
            f"reward accuracy {before.get('reward_accuracy', 0.0):.3f} on the held-out split"
        )

    measured = recipe.train_with_evaluations(trainer, reporter, evaluate, _ours, on_before=log_before)
    metrics = dict(measured.metrics)
    for name in REWARD_METRICS.values():
        metrics[f"{name}_before"] = measured.before.get(name)
        metrics[name] = measured.after.get(name)
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


OBJECTIVE = recipe.Objective(
    load_data=load_preference_datasets,
    unit="pairs",
    run=run_dpo,
    no_eval_note="no held-out split (validation_split=0 and no validation dataset): no reward metrics",
    report=lambda request: {
        "beta": request.tuning_parameters.beta,
        "loss_type": request.tuning_parameters.loss_type,
        "max_prompt_length": request.tuning_parameters.max_prompt_length,
    },
)
