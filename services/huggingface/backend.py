"""HuggingFaceBackend: LoRA, QLoRA and full fine-tunes with transformers, PEFT and TRL.

Importing this module must stay cheap (the API process does it): torch and
friends are imported inside ``train()`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from common.schemas import Method, TrainingRequest, TrainingType
from common.settings import get_settings
from common.train.models import GGUF_QLORA_REFUSAL
from common.train.probes import job_python, qlora_problem
from common.trainer import BaseTrainerBackend, TrainContext

if TYPE_CHECKING:
    from common.storage import ObjectStore


class HuggingFaceBackend(BaseTrainerBackend):
    name: ClassVar[str] = "huggingface"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.qlora, Method.full)
    training_type: ClassVar[str] = "sft"
    required_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "trl")

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        problems = super().check(request, runner=runner)
        cust = request.customization
        # QLoRA: bitsandbytes must quantize to 4 bits where the jobs run (probed once, in the job interpreter).
        if cust.method == Method.qlora and (reason := qlora_problem(runner, job_python(get_settings().python_executable))):
            problems.append(reason)
        if cust.method == Method.qlora and (gguf_base := _catalog_gguf_base(request)):
            problems.append(GGUF_QLORA_REFUSAL.format(model=gguf_base))
        if cust.method != Method.full and cust.trainable_layers:
            problems.append("customization.trainable_layers applies to method 'full' only")
        return problems

    def check_inputs(self, request: TrainingRequest, store: ObjectStore) -> list[str]:
        from common.peek import dataset_problems

        return dataset_problems(store, request, TrainingType.sft)

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        """Raises: DatasetError (bad data), ModelLoadError (bad base), Unprocessable (bad LoRA options)."""
        from common.train import data, models, sft

        request = ctx.request
        tp = request.tuning_parameters
        # Data first: a bad row should fail in a second, not after a model download.
        train_ds, eval_ds, fmt = data.load_sft_datasets(
            ctx.train_files, ctx.validation_files, validation_split=tp.validation_split, seed=tp.seed
        )
        ctx.reporter.log(
            f"data: {len(train_ds)} train / {len(eval_ds) if eval_ds is not None else 0} validation rows ({fmt})"
        )
        precision = models.resolve_precision(request.customization.precision)
        if precision != request.customization.precision:
            ctx.reporter.log(
                f"precision {request.customization.precision.value} is not supported here; using {precision.value}"
            )
        source = models.resolve_model(request, ctx.work_dir)
        tokenizer = models.load_tokenizer(source)
        model = models.load_causal_lm(request, source, ctx.work_dir)
        peft_config = models.prepare_model(request, model)
        trainer, metrics = sft.run_sft(
            model, tokenizer, train_ds, eval_ds, request, ctx.output_dir, ctx.reporter,
            dataset_format=fmt, peft_config=peft_config,
        )
        sft.save(trainer, tokenizer, ctx.output_dir)
        models.save_adapter_reference(ctx.output_dir, source)
        return {"method": request.customization.method.value, "dataset_format": fmt, **metrics}


def _catalog_gguf_base(request: TrainingRequest) -> str | None:
    """The request's base model id when the catalog serves it here as a GGUF file."""
    from common.catalog import resolve

    ref = request.base_model.weights_url or request.base_model.model_name
    entry = resolve(ref, get_settings())
    return ref if entry is not None and entry.available and entry.gguf_file else None
