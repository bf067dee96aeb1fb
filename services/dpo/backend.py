"""DPOBackend: direct preference optimization with TRL's ``DPOTrainer``.

LoRA by default: the reference model is the base with the adapter disabled, so only one
model sits in memory. The base may be an earlier SFT job's output (its adapter is merged
first), which is the SFT -> DPO pipeline. The job is the shared recipe (``common.train.recipe``)
with the DPO objective (``common.train.dpo``: preference rows, reference model, reward metrics).
Importing this module stays cheap (the API process does it); torch and TRL load inside
``train()`` only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from common.schemas import Method, TrainingRequest, TrainingType
from common.storage import ObjectStore
from common.train import recipe
from common.trainer import BaseTrainerBackend, TrainContext


class DPOBackend(BaseTrainerBackend):
    name: ClassVar[str] = "dpo"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.qlora, Method.full)
    training_type: ClassVar[str] = "dpo"
    required_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "trl")

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        problems = super().check(request, runner=runner) + recipe.transformers_problems(request, runner)
        tp = request.tuning_parameters
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
        from common.train import dpo

        return recipe.train(ctx, dpo.OBJECTIVE)
