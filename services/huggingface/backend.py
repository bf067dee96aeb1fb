"""HuggingFaceBackend: LoRA, QLoRA and full fine-tunes with transformers, PEFT and TRL.

The job is the shared recipe (``common.train.recipe``) with the SFT objective and the base
loaded by transformers (4-bit for QLoRA). Importing this module must stay cheap (the API
process does it): torch and friends are imported inside ``train()`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from common.schemas import Method, TrainingRequest, TrainingType
from common.train import recipe
from common.trainer import BaseTrainerBackend, TrainContext

if TYPE_CHECKING:
    from common.storage import ObjectStore


class HuggingFaceBackend(BaseTrainerBackend):
    name: ClassVar[str] = "huggingface"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.qlora, Method.full)
    training_type: ClassVar[str] = "sft"
    required_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "trl")

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        return super().check(request, runner=runner) + recipe.transformers_problems(request, runner)

    def check_inputs(self, request: TrainingRequest, store: ObjectStore) -> list[str]:
        from common.peek import dataset_problems

        return dataset_problems(store, request, TrainingType.sft)

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        """Raises: DatasetError (bad data), ModelLoadError (bad base), Unprocessable (bad LoRA options)."""
        from common.train import sft

        return recipe.train(ctx, sft.OBJECTIVE)
