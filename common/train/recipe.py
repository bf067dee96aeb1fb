"""The training recipe every backend shares: its arguments, its request checks and its pipeline.

A job reads top to bottom (after trl/scripts/sft.py and dpo.py): load the data (a bad row fails
in a second, before any model download) -> resolve the base model -> load and prepare it ->
build the trainer -> evaluate, train, evaluate -> save the output and the adapter's base. What
differs between backends comes in as hooks: the objective (``Objective``: SFT or DPO data, trainer
and metrics, defined in ``sft.py`` and ``dpo.py``) and the model loader (``load_model``: Unsloth
loads its own way). ``training_args`` maps the request onto the ``TrainingArguments`` that
``SFTConfig`` and ``DPOConfig`` share, in one place.

Importing this module stays cheap (the API processes call ``transformers_problems``): torch,
transformers and TRL load inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.schemas import Method, Precision, TrainingRequest
from common.settings import get_settings
from common.train.models import GGUF_QLORA_REFUSAL, resolve_precision
from common.train.probes import job_python, qlora_problem

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from common.train.models import ModelSource
    from common.train.reporting import ProgressReporter
    from common.trainer import TrainContext

MAX_PER_DEVICE_BATCH = 8

# --------------------------------------------------------------------------- request checks (API process)


def transformers_problems(request: TrainingRequest, runner: str) -> list[str]:
    """What the transformers-loaded backends (HuggingFace, DPO) refuse: QLoRA where bitsandbytes cannot
    quantize (probed once, in the job interpreter) or on a GGUF catalog base, and ``trainable_layers``
    outside a full fine-tune."""
    problems = []
    cust = request.customization
    if cust.method == Method.qlora:
        if reason := qlora_problem(runner, job_python(get_settings().python_executable)):
            problems.append(reason)
        if gguf_base := catalog_gguf_base(request):
            problems.append(GGUF_QLORA_REFUSAL.format(model=gguf_base))
    if cust.method != Method.full and cust.trainable_layers:
        problems.append("customization.trainable_layers applies to method 'full' only")
    return problems


def catalog_gguf_base(request: TrainingRequest) -> str | None:
    """The request's base model id when the catalog serves it here as a GGUF file."""
    from common.catalog import resolve

    ref = request.base_model.weights_url or request.base_model.model_name
    entry = resolve(ref, get_settings())
    return ref if entry is not None and entry.available and entry.gguf_file else None


# --------------------------------------------------------------------------- the shared arguments


def batch_sizes(request: TrainingRequest) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation) that reach ``batch_size`` per optimizer step."""
    tp = request.tuning_parameters
    per_device = tp.per_device_batch_size or min(tp.batch_size, MAX_PER_DEVICE_BATCH)
    return per_device, max(1, math.ceil(tp.batch_size / per_device))


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


def training_args(request: TrainingRequest, output_dir: Path, *, has_eval: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords both ``SFTConfig`` and ``DPOConfig`` take from the request.

    Every one is set, so TRL's own defaults (DPO's bf16 and checkpointing on, lr 1e-6) never decide
    what a job does."""
    import torch

    tp = request.tuning_parameters
    per_device, accumulation = batch_sizes(request)
    precision = resolve_precision(request.customization.precision)
    return {
        "output_dir": str(output_dir),
        "learning_rate": tp.learning_rate,
        "num_train_epochs": tp.num_epochs,
        "max_steps": tp.max_steps or -1,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "warmup_steps": tp.warmup_ratio,  # transformers 5: a float in [0, 1) is the ratio (no warmup_ratio)
        "lr_scheduler_type": tp.lr_scheduler_type,
        "weight_decay": tp.weight_decay,
        **checkpointing_args(tp.gradient_checkpointing),
        "logging_steps": tp.logging_steps,
        "eval_strategy": "no" if not has_eval else "steps" if tp.eval_steps else "epoch",
        "eval_steps": tp.eval_steps,
        "save_strategy": "steps" if tp.save_steps else "no",
        "save_steps": tp.save_steps or 500,
        "bf16": precision == Precision.bf16,
        "fp16": precision == Precision.fp16,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": [],
        "seed": tp.seed,
        # TRL already counts tokens per step (``num_tokens``); a second count would be extra work.
        "include_num_input_tokens_seen": "no",
        # Our callback prints one line per log step; tqdm bars would only clutter the job log.
        "disable_tqdm": True,
    }


# --------------------------------------------------------------------------- evaluate, train, evaluate


@dataclass
class Measured:
    """What one evaluate-train-evaluate run measured; an objective turns it into its metrics."""

    before: dict[str, float]  # held-out metrics before training (empty without a held-out split)
    after: dict[str, float]  # and after (empty when cancelled)
    metrics: dict[str, Any]  # the ones every job reports: train_loss, tokens, timing, steps, rows


def train_with_evaluations(
    trainer: Trainer,
    reporter: ProgressReporter,
    evaluate: Callable[[Trainer], dict[str, float]],
    from_log: Callable[[dict[str, Any]], dict[str, float]],
    *,
    on_before: Callable[[dict[str, float]], None] | None = None,
) -> Measured:
    """Evaluate (``on_before`` sees the result), train, evaluate. The final evaluation reuses the one ``train()`` logged at its last
    step when there is one (no need to pay twice); evaluations inside ``train()`` are not training
    time, so throughput leaves them out."""
    has_eval = trainer.eval_dataset is not None
    before = evaluate(trainer) if has_eval else {}
    if before and on_before is not None:
        on_before(before)
    history_start = len(trainer.state.log_history)
    result = trainer.train()
    state = trainer.state
    after: dict[str, float] = {}
    if has_eval and not reporter.cancel_requested.is_set():
        last = next((h for h in reversed(state.log_history) if "eval_loss" in h and h.get("step") == state.global_step), None)
        after = from_log(last) if last else evaluate(trainer)
    runtime = float(result.metrics.get("train_runtime") or 0.0)
    train_seconds = max(runtime - sum(h.get("eval_runtime", 0.0) for h in state.log_history[history_start:]), 0.0)
    tokens = _tokens_seen(trainer)
    return Measured(before, after, {
        "train_loss": float(result.training_loss),
        "tokens_seen": tokens,
        "runtime_seconds": round(runtime, 3),
        "tokens_per_second": round(tokens / train_seconds, 1) if tokens and train_seconds else None,
        "steps": state.global_step,
        "train_rows": len(trainer.train_dataset),
        "eval_rows": len(trainer.eval_dataset) if has_eval else 0,
    })


def _tokens_seen(trainer: Trainer) -> int | None:
    """Non-padding tokens trained on, from TRL's own per-step count."""
    count = getattr(trainer, "_total_train_tokens", None)
    if count is None:
        count = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)
    return int(count) if count else (trainer.state.num_input_tokens_seen or None)


# --------------------------------------------------------------------------- the pipeline (inside the job)

Loaded = tuple["PreTrainedModel", "PreTrainedTokenizerBase", "PeftConfig | None"]
ModelLoader = Callable[["TrainContext", "ModelSource"], Loaded]


@dataclass(frozen=True)
class Objective:
    """What SFT and DPO do differently: the rows they read, the trainer they build and run."""

    # (train files, validation files, validation_split=, seed=) -> (train, validation or None, format)
    load_data: Callable[..., tuple[Dataset, Dataset | None, str]]
    unit: str  # what a row is called in the job log: "rows", "pairs"
    # (model, tokenizer, train, eval, request, output_dir, reporter, dataset_format=, peft_config=)
    # -> (trainer, metrics)
    run: Callable[..., tuple[Trainer, dict[str, Any]]]
    no_eval_note: str | None = None  # logged when there is no held-out split
    report: Callable[[TrainingRequest], dict[str, Any]] = field(default=lambda request: {})


def load_with_transformers(ctx: TrainContext, source: ModelSource) -> Loaded:
    """The base as transformers loads it (4-bit for QLoRA, earlier adapters merged), prepared for
    its method: a LoRA config for the trainer to apply, or frozen layers for a partial full fine-tune."""
    from common.train import models

    tokenizer = models.load_tokenizer(source)
    model = models.load_causal_lm(ctx.request, source, ctx.work_dir)
    return model, tokenizer, models.prepare_model(ctx.request, model)


def train(
    ctx: TrainContext,
    objective: Objective,
    *,
    load_model: ModelLoader = load_with_transformers,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One job: data, model, trainer, train and evaluate, save. Returns the metrics for metrics.json.

    Raises:
        DatasetError: a bad row, or data the model cannot train on.
        ModelLoadError: the base model cannot be loaded.
        Unprocessable: options the model or backend cannot honour.
    """
    from common.train import models

    request, log = ctx.request, ctx.reporter.log
    tp = request.tuning_parameters
    train_ds, eval_ds, fmt = objective.load_data(
        ctx.train_files, ctx.validation_files, validation_split=tp.validation_split, seed=tp.seed
    )
    log(f"data: {len(train_ds)} train / {len(eval_ds) if eval_ds is not None else 0} validation {objective.unit} ({fmt})")
    if eval_ds is None and objective.no_eval_note:
        log(objective.no_eval_note)
    precision = resolve_precision(request.customization.precision)
    if precision != request.customization.precision:
        log(f"precision {request.customization.precision.value} is not supported here; using {precision.value}")
    source = models.resolve_model(request, ctx.work_dir)
    if source.adapter_dirs:
        log(f"base: {source.name_or_path} with {len(source.adapter_dirs)} earlier adapter(s) merged")
    model, tokenizer, peft_config = load_model(ctx, source)
    trainer, metrics = objective.run(
        model, tokenizer, train_ds, eval_ds, request, ctx.output_dir, ctx.reporter,
        dataset_format=fmt, peft_config=peft_config,
    )
    # The adapter (PEFT) or the full model, plus the tokenizer, so the output loads on its own.
    trainer.save_model(str(ctx.output_dir))
    tokenizer.save_pretrained(str(ctx.output_dir))
    models.save_adapter_reference(ctx.output_dir, source)
    return {
        "method": request.customization.method.value, "dataset_format": fmt,
        **objective.report(request), **(report or {}), **metrics,
    }
