"""The models registry's shapes (/v1/models): OpenAI's model object (id, object, created, owned_by)
plus the registry's fields; names follow the model listing fine-tuning clients already read where
they fit (training_params, metrics)."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from common.schemas.training import Method, TrainingType


class ModelKind(StrEnum):
    base = "base"
    fine_tuned = "fine-tuned"


class ModelMetrics(BaseModel):
    """The job's final metrics (its metrics.json), plus perplexity."""

    model_config = ConfigDict(extra="allow")
    train_loss: float | None = Field(default=None, description="Mean training loss over the run.")
    eval_loss: float | None = Field(default=None, description="Held-out loss after training.")
    perplexity: float | None = Field(default=None, description="exp(eval_loss).")

    @classmethod
    def from_job(cls, metrics: dict[str, Any]) -> ModelMetrics:
        eval_loss = metrics.get("eval_loss")
        perplexity = None
        if isinstance(eval_loss, int | float) and eval_loss < 700:  # exp(700+) is not a JSON number
            perplexity = math.exp(eval_loss)
        return cls.model_validate({**metrics, "perplexity": perplexity})


class ModelPublic(BaseModel):
    id: str = Field(description="`ft:<finetune id>` for a fine-tuned model; the catalog id for a base model.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds (0 for base models).")
    owned_by: str = Field(description="The workspace; for a base model, the organisation part of its id.")
    kind: ModelKind
    name: str
    base_model: str | None = Field(default=None, description="What the model was fine-tuned from.")
    description: str | None = None
    available: bool = Field(default=True, description="Base models: whether its weights can be loaded here.")
    provider: str | None = Field(default=None, description="Trainer backend that produced it.")
    method: Method | None = None
    training_type: TrainingType | None = None
    training_params: dict[str, Any] | None = Field(default=None, description="The finetune's hyperparameters as sent.")
    metrics: ModelMetrics | None = None
    size_bytes: int | None = Field(default=None, description="Bytes of its artifacts in storage.")
    adapter_uri: str | None = Field(default=None, description="The PEFT adapter (with tokenizer and metrics.json).")
    merged_uri: str | None = Field(default=None, description="Full weights: exported, or the output of a full fine-tune.")
    finetune_id: str | None = None
    workspace_id: str | None = None
    created_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def size_mb(self) -> float | None:
        return None if self.size_bytes is None else round(self.size_bytes / 1_000_000, 3)


class ModelsPublic(BaseModel):
    """OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
