"""DPOBackend: direct preference optimization with TRL's ``DPOTrainer``.

LoRA by default: the reference model is the base with the adapter disabled, so only one
model sits in memory. The base may be an earlier SFT job's output (its adapter is merged
first), which is the SFT -> DPO pipeline. Importing this module stays cheap (the API
process does it); torch and TRL load inside ``train()`` only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from common.schemas import Method, TrainingRequest, TrainingType
from common.settings import get_settings
from common.storage import ObjectStore
from common.train.probes import job_python, qlora_problem
from common.trainer import BaseTrainerBackend, TrainContext


class DPOBackend(BaseTrainerBackend):
    name: ClassVar[str] = "dpo"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.qlora, Method.full)
    training_type: ClassVar[str] = "dpo"
    required_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "trl")

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        problems = super().check(request, runner=runner)
        cust, tp = request.customization, request.tuning_parameters
        if cust.method == Method.qlora and (reason := qlora_problem(runner, job_python(get_settings().python_executable))):
            problems.append(reason)
        if cust.method != Method.full and cust.trainable_layers:
            problems.append("customization.trainable_layers applies to method 'full' only")
        if tp.max_prompt_length is not None and tp.max_prompt_length >= tp.max_sequence_length:
            problems.append(
                f"tuning_parameters.max_prompt_length ({tp.max_prompt_length}) must be below max_sequence_length "
                f"({tp.max_sequence_length}) to leave room for the answer"
            )
        return problems

    def check_inputs(self, request: TrainingRequest, store: ObjectStore) -> list[str]:
        from common.peek import dataset_problems

        return dataset_problems(store, request, TrainingType.dpo)

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        """Raises: DatasetError (bad or non-preference data), ModelLoadError (bad base), Unprocessable."""
        from common.train import data, dpo, models, sft

        request = ctx.request
        tp = request.tuning_parameters
        train_ds, eval_ds, fmt = data.load_preference_datasets(
            ctx.train_files, ctx.validation_files, validation_split=tp.validation_split, seed=tp.seed
        )
        ctx.reporter.log(
            f"data: {len(train_ds)} train / {len(eval_ds) if eval_ds is not None else 0} validation pairs ({fmt})"
        )
        if eval_ds is None:
            ctx.reporter.log("no held-out split (validation_split=0 and no validation dataset): no reward metrics")
        source = models.resolve_model(request, ctx.work_dir)
        if source.adapter_dirs:
            ctx.reporter.log(f"base: {source.name_or_path} with {len(source.adapter_dirs)} earlier adapter(s) merged")
        tokenizer = models.load_tokenizer(source)
        model = models.load_causal_lm(request, source, ctx.work_dir)
        peft_config = models.prepare_model(request, model)
        trainer, metrics = dpo.run_dpo(
            model, tokenizer, train_ds, eval_ds, request, ctx.output_dir, ctx.reporter,
            dataset_format=fmt, peft_config=peft_config,
        )
        sft.save(trainer, tokenizer, ctx.output_dir)
        models.save_adapter_reference(ctx.output_dir, source)
        tp_used = {"beta": tp.beta, "loss_type": tp.loss_type, "max_prompt_length": tp.max_prompt_length}
        return {"method": request.customization.method.value, "dataset_format": fmt, **tp_used, **metrics}
