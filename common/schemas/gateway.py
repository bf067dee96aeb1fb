"""Models of the gateway's /v1/datasets, /v1/finetune, /v1/keys and /v1/dataservice/* APIs.

Paths, field names and status strings are those the gateway's existing clients use
(docs/gateway.md); everything a finetune adds on top (hyperparameters, progress, validation reports)
uses the names of the training and job contracts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from common import components
from common.schemas.base import MAX_MODEL_REF_CHARS, ModuleNames, Secret, Strict
from common.schemas.jobs import EventLevel, JobError, JobStatus, Metrics, Progress
from common.schemas.training import (
    Customization,
    LossType,
    LrSchedulerType,
    Method,
    Precision,
    Resources,
    TargetModules,
    TrainingRequest,
    TrainingType,
    TuningParameters,
)
from common.schemas.validation import ValidationReport

T = TypeVar("T")


_PROVIDER_DOC = "Which trainer service runs a finetune (unknown names are refused with 422)."
if TYPE_CHECKING:

    class Provider(StrEnum):
        """The trainer services' names (built from ``common.components`` when this module loads)."""

else:
    Provider = StrEnum("Provider", {name: name for name in components.trainer_names()})
    Provider.__doc__ = _PROVIDER_DOC


_DATA_OF = {TrainingType.sft: "instruction data", TrainingType.dpo: "preference data"}


def _trains(provider: Provider) -> TrainingType:
    """The training type a provider's own backend trains."""
    return TrainingType(components.components()[provider.value].training_type)


class DatasetType(StrEnum):
    training = "training"
    validation = "validation"


class DatasetStatus(StrEnum):
    awaiting_upload = "awaiting_upload"
    uploaded = "uploaded"


class Scope(StrEnum):
    """API-key scopes. ``completions.write`` (the contract's) also allows reads."""

    read = "completions.read"
    write = "completions.write"


class FinetuneStatus(StrEnum):
    """A finetune's status: the contract's validation states, then its trainer job's states mirrored."""

    created = "created"
    validation_in_progress = "pk_dataset_validation_in_progress"
    validation_successful = "pk_dataset_validation_successfull"  # the contract spells it so
    validation_failed = "pk_dataset_validation_failed"
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in FINETUNE_TERMINAL

    @property
    def has_job(self) -> bool:
        """A trainer job exists and may still run (the finetune's datasets are in use)."""
        return self in FINETUNE_ACTIVE


FINETUNE_TERMINAL = frozenset({FinetuneStatus.completed, FinetuneStatus.failed, FinetuneStatus.cancelled})
FINETUNE_ACTIVE = frozenset({FinetuneStatus.pending, FinetuneStatus.running})

# The one transition table of finetunes; gateway.db.set_finetune_status is the only writer.
# `created` is where PUT /v1/finetune/{id} (attach datasets) resets a finetune that is not running.
# A job may finish between two polls, so pending can move straight to any end state.
_FS = FinetuneStatus
FINETUNE_TRANSITIONS: dict[FinetuneStatus, frozenset[FinetuneStatus]] = {
    _FS.created: frozenset({_FS.validation_in_progress, _FS.cancelled}),
    _FS.validation_in_progress: frozenset(
        {_FS.validation_successful, _FS.validation_failed, _FS.created, _FS.cancelled}
    ),
    _FS.validation_successful: frozenset({_FS.validation_in_progress, _FS.pending, _FS.created, _FS.cancelled}),
    _FS.validation_failed: frozenset({_FS.validation_in_progress, _FS.created, _FS.cancelled}),
    _FS.pending: frozenset({_FS.running, _FS.completed, _FS.failed, _FS.cancelled}),
    _FS.running: frozenset({_FS.completed, _FS.failed, _FS.cancelled}),
    _FS.completed: frozenset({_FS.created}),
    _FS.failed: frozenset({_FS.created}),
    _FS.cancelled: frozenset({_FS.created}),
}


@dataclass(frozen=True)
class _Lands:
    """Where a hyperparameter lands in the training request: a part of it (``tuning_parameters``,
    ``customization``) and the field's name there. Kept in the field's metadata."""

    part: str
    name: str


def _shown(value: Any) -> str:
    """A default as the descriptions show it: JSON's spelling for booleans, numbers in their short form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _knob(part: type[Strict], name: str, *, doc: str | None = None, **extra: Any) -> Any:
    """An optional hyperparameter made from the training request's field ``name`` in ``part``: its
    bounds, its description (unless ``doc`` says it in the gateway's terms) and its default, shown in
    brackets. Unset, the field is left out of the training request, so the trainer's default applies."""
    source = part.model_fields[name]
    lands = _Lands(next(p for p, f in TrainingRequest.model_fields.items() if f.annotation is part), name)
    text = (doc or source.description or "").rstrip(".")
    if source.default is not None and source.default is not PydanticUndefined:
        text += f" [{_shown(source.default)}]"
    info: FieldInfo = Field(None, description=f"{text}.", **extra)
    info.metadata = [*source.metadata, lands]
    return info


class FinetuneHyperparameters(Strict):
    """A finetune's knobs: the contract's ``epochs`` plus the trainer's own names (TRL's where they
    exist), each one a field of the training request (``TuningParameters``, ``Customization``) with its
    bounds. Unset fields take the trainer service's defaults (shown in brackets, or in words where computed)."""

    epochs: float | None = _knob(TuningParameters, "num_epochs")
    max_steps: int | None = _knob(TuningParameters, "max_steps")
    learning_rate: float | None = _knob(TuningParameters, "learning_rate")
    batch_size: int | None = _knob(TuningParameters, "batch_size")
    per_device_batch_size: int | None = _knob(TuningParameters, "per_device_batch_size")
    warmup_ratio: float | None = _knob(TuningParameters, "warmup_ratio")
    weight_decay: float | None = _knob(TuningParameters, "weight_decay")
    lr_scheduler_type: LrSchedulerType | None = _knob(TuningParameters, "lr_scheduler_type")
    gradient_checkpointing: bool | None = _knob(TuningParameters, "gradient_checkpointing")
    max_sequence_length: int | None = _knob(
        TuningParameters, "max_sequence_length", doc="Tokens per row; validation fails rows that are longer."
    )
    logging_steps: int | None = _knob(TuningParameters, "logging_steps")
    eval_steps: int | None = _knob(TuningParameters, "eval_steps")
    save_steps: int | None = _knob(TuningParameters, "save_steps")
    validation_split: float | None = _knob(TuningParameters, "validation_split")
    assistant_only_loss: bool | None = _knob(TuningParameters, "assistant_only_loss")
    seed: int | None = _knob(TuningParameters, "seed")
    training_type: TrainingType | None = Field(
        None, description="sft | dpo [dpo for provider 'dpo', else sft]; dpo runs on the DPO service."
    )
    method: Method | None = _knob(Customization, "method")
    lora_r: int | None = _knob(
        Customization, "rank", doc="LoRA rank (alias: rank).", validation_alias=AliasChoices("lora_r", "rank")
    )
    lora_alpha: int | None = _knob(Customization, "lora_alpha")
    lora_dropout: float | None = _knob(Customization, "lora_dropout")
    target_modules: TargetModules | None = _knob(Customization, "target_modules")
    trainable_layers: ModuleNames | None = _knob(Customization, "trainable_layers")
    precision: Precision | None = _knob(Customization, "precision")
    beta: float | None = _knob(TuningParameters, "beta")
    loss_type: LossType | None = _knob(TuningParameters, "loss_type")
    max_prompt_length: int | None = _knob(TuningParameters, "max_prompt_length")

    def to_training_request(
        self,
        *,
        job_id: str,
        model: str,
        train_uri: str,
        validation_uri: str | None,
        output_uri: str,
        log_uri: str,
        labels: dict[str, str],
        resources: Resources | None = None,
        model_token: str | None = None,
    ) -> TrainingRequest:
        """The trainer service's ``POST /train`` body for this finetune: the one place the mapping lives
        (each hyperparameter set goes where its field's metadata says).

        Raises:
            pydantic.ValidationError: the combination breaks a rule of TrainingRequest.
        """
        parts: dict[str, dict[str, Any]] = defaultdict(dict)
        for name, value in self.model_dump(exclude_none=True, mode="json").items():
            lands = next((m for m in type(self).model_fields[name].metadata if isinstance(m, _Lands)), None)
            if lands is not None:
                parts[lands.part][lands.name] = value
        datasets = [{"source": train_uri, "split": "train"}]
        if validation_uri:
            datasets.append({"source": validation_uri, "split": "validation"})
        base_model: dict[str, Any] = {"model_name": model}
        if model_token:
            base_model["huggingface_token"] = model_token
        return TrainingRequest.model_validate(
            {
                "job_id": job_id,
                "base_model": base_model,
                "resources": resources.model_dump() if resources else {},
                "datasets": datasets,
                "artifacts": {"output_uri": output_uri, "log_uri": log_uri},
                "labels": labels,
                **parts,
            }
        )


class ApiKeyPublic(BaseModel):
    """An API key as listed; the key itself is shown once, at creation, and stored only as a hash."""

    id: str
    name: str
    workspace_id: str
    scopes: list[Scope]
    prefix: str = Field(description="First characters of the key, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Envelope(BaseModel, Generic[T]):
    """The contract's success body: ``{"success": true, "data": ...}``."""

    success: bool = True
    data: T


class ListEnvelope(BaseModel, Generic[T]):
    success: bool = True
    data: list[T]
    count: int = Field(description="Items matching, before limit/offset.")


_ID_DESCRIPTION = "Lowercase letters, digits, '-' and '_' (1-64)."
_WORKSPACE_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class DatasetCreate(Strict):
    name: str = Field(..., min_length=1, max_length=255, description="The file's name, e.g. train.jsonl.")
    provider: Provider = Field(Provider(components.trainer_names()[0]), description="Trainer the dataset is meant for.")
    model: str | None = Field(None, max_length=MAX_MODEL_REF_CHARS, description="Base model the dataset is meant for.")
    type: DatasetType = Field(DatasetType.training, description="training | validation")
    project_id: str = Field("default", pattern=_WORKSPACE_RE, description=f"Project in the workspace. {_ID_DESCRIPTION}")


class DatasetUpdate(Strict):
    s3_path: str = Field(
        ..., min_length=1, max_length=1024,
        description="Object key of the uploaded file, relative to the storage base (as in signed_url), or a full "
        "s3:// / file:// URI; it must lie under the workspace's users/<workspace>/ prefix.",
    )


class DatasetCreated(BaseModel):
    id: str
    signed_url: str = Field(description="HTTP PUT the file here before it expires.")
    s3_path: str = Field(description="Key the upload lands at; PUT /v1/datasets/{id} attaches it.")
    expires_at: datetime


class DatasetPublic(BaseModel):
    id: str
    name: str
    type: DatasetType
    provider: Provider
    model: str | None
    workspace_id: str
    project_id: str
    status: DatasetStatus
    s3_path: str | None = Field(None, description="Key of the attached file (relative to the storage base).")
    uri: str | None = Field(None, description="Full URI of the attached file.")
    size_bytes: int | None = None
    rows: int | None = Field(None, description="Rows counted by the last validation.")
    validation_status: FinetuneStatus | None = Field(
        None, description="Outcome of the last validation that read this file (pk_dataset_validation_*)."
    )
    validation: ValidationReport | None = None
    created_at: datetime
    updated_at: datetime


class FinetuneCreate(Strict):
    name: str = Field(..., min_length=1, max_length=255)
    virtual_key: Secret | None = Field(
        None, description="Write-only credential for the base model's weights (used as its Hugging Face token)."
    )
    provider: Provider = Field(..., description=f"{' | '.join(components.trainer_names())}: picks the trainer service.")
    model: str = Field(
        ..., min_length=1, max_length=MAX_MODEL_REF_CHARS,
        description="Base model: a hub id (org/name), a path under the configured model directories, or the id of "
        "one of this workspace's completed finetunes (trains on top of its output).",
    )
    hyperparameters: FinetuneHyperparameters = Field(default_factory=FinetuneHyperparameters)
    resources: Resources | None = Field(None, description="Job resources (GPUs, memory); the trainer's defaults if unset.")
    project_id: str = Field("default", pattern=_WORKSPACE_RE, description=f"Project in the workspace. {_ID_DESCRIPTION}")
    training_dataset_id: str | None = Field(None, max_length=64, description="May also be attached later with PUT.")
    validation_dataset_id: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _dpo_provider(self) -> FinetuneCreate:
        own, asked = _trains(self.provider), self.hyperparameters.training_type
        if own != TrainingType.sft and asked not in (None, own):  # an SFT provider hands other types on; others cannot
            raise ValueError(f"provider '{self.provider}' trains {_DATA_OF[own]} only; drop hyperparameters.training_type "
                             f"or use '{own}'")
        return self

    def training_type(self) -> TrainingType:
        return training_type_of(self.provider, self.hyperparameters)


def training_type_of(provider: Provider, hp: FinetuneHyperparameters) -> TrainingType:
    return hp.training_type if hp.training_type is not None else _trains(provider)


def service_for(provider: Provider, training_type: TrainingType) -> str:
    """The trainer service a finetune runs on: its provider's, or the first one that trains its type
    (the DPO service for DPO)."""
    if _trains(provider) == training_type:
        return provider.value
    return next(name for name in components.trainer_names() if _trains(Provider(name)) == training_type)


class FinetuneUpdate(Strict):
    training_dataset_id: str = Field(..., min_length=1, max_length=64, description="Dataset of type training.")
    validation_dataset_id: str | None = Field(None, max_length=64, description="Dataset of type validation (optional).")


class FinetuneStart(Strict):
    override_model: str | None = Field(
        None, min_length=1, max_length=MAX_MODEL_REF_CHARS,
        description="Train this base model instead of the finetune's `model` (the same rule as `model`).",
    )


class FinetuneCreated(BaseModel):
    id: str
    status: FinetuneStatus


class FinetuneValidation(BaseModel):
    started_at: datetime | None = None
    finished_at: datetime | None = None
    training: ValidationReport | None = None
    validation: ValidationReport | None = None
    error: str | None = Field(None, description="Why validation could not run (e.g. the file is gone).")


class FinetuneRun(BaseModel):
    """One ended job of a finetune (a finetune reset and started again runs a new job)."""

    job_id: str
    status: JobStatus
    output_uri: str | None = Field(None, description="Where this job wrote its outputs (may hold nothing if it ended early).")
    log_uri: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ArtifactFile(BaseModel):
    path: str = Field(description="Relative to the run's output, e.g. `adapter_model.safetensors`.")
    size_bytes: int
    url: str = Field(description="Signed, short-lived GET URL (no API key needed).")
    expires_at: datetime


class RunArtifacts(BaseModel):
    job_id: str
    status: JobStatus
    output_uri: str | None = None
    files: list[ArtifactFile] = Field(default_factory=list)
    note: str | None = Field(None, description="Why there are no files, when there are none.")


class ArtifactsPublic(BaseModel):
    finetune_id: str
    runs: list[RunArtifacts] = Field(description="Newest first: the current job, then earlier ones.")


class FinetunePublic(BaseModel):
    id: str
    name: str
    workspace_id: str
    project_id: str
    provider: Provider
    service: str = Field(description="Trainer service the job runs on.")
    training_type: TrainingType
    model: str
    override_model: str | None = None
    status: FinetuneStatus
    hyperparameters: FinetuneHyperparameters
    resources: Resources | None = None
    training_dataset_id: str | None = None
    validation_dataset_id: str | None = None
    validation: FinetuneValidation | None = None
    job_id: str | None = Field(None, description="The trainer service's job, once started.")
    progress: Progress = Field(default_factory=Progress)
    metrics: Metrics = Field(default_factory=Metrics)
    error: JobError | None = None
    output_uri: str | None = Field(None, description="Where the adapter / model is written.")
    log_uri: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    fine_tuned_model: str | None = Field(
        None, description="The registered model's id (GET /v1/models/{id}) once the finetune completed; null before."
    )
    runs: list[FinetuneRun] = Field(
        default_factory=list, description="Every ended job, oldest first, with its output_uri (kept across re-runs)."
    )


class FinetuneEventPublic(BaseModel):
    id: int
    finetune_id: str
    created_at: datetime
    level: EventLevel
    type: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


