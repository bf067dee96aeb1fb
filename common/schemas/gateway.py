"""Models of the gateway's /v1/datasets, /v1/finetune, /v1/keys and /v1/dataservice/* APIs.

Paths, field names and status strings are those the gateway's existing clients use
(docs/gateway.md); everything a finetune adds on top (hyperparameters, progress, validation reports)
uses the names of the training and job contracts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field, model_validator

from common import components
from common.schemas.base import MAX_MODEL_REF_CHARS, MAX_SEED, MAX_STEPS, ModuleNames, Secret, Strict
from common.schemas.jobs import EventLevel, JobError, Metrics, Progress
from common.schemas.training import Method, Precision, Resources, TrainingRequest, TrainingType
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


# Hyperparameter names copied onto TuningParameters unchanged, and those renamed onto Customization.
_TUNING_NAMES = (
    "learning_rate", "batch_size", "per_device_batch_size", "max_steps", "warmup_ratio", "weight_decay",
    "lr_scheduler_type", "gradient_checkpointing", "max_sequence_length", "logging_steps", "eval_steps",
    "save_steps", "validation_split", "assistant_only_loss", "seed", "beta", "loss_type", "max_prompt_length",
)
_CUSTOMIZATION_NAMES = {
    "method": "method", "lora_r": "rank", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
    "target_modules": "target_modules", "trainable_layers": "trainable_layers", "precision": "precision",
}


class FinetuneHyperparameters(Strict):
    """A finetune's knobs: the contract's ``epochs`` plus the trainer's own names (TRL's where they
    exist). Unset fields take the trainer service's defaults (shown in brackets)."""

    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the training data [3].")
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps; overrides epochs when set.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak learning rate [2e-4].")
    batch_size: int | None = Field(None, gt=0, le=4096, description="Effective batch size [8].")
    per_device_batch_size: int | None = Field(None, gt=0, le=1024, description="Micro-batch [min(batch_size, 8)].")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of steps warming up [0].")
    weight_decay: float | None = Field(None, ge=0, lt=1, description="AdamW weight decay [0].")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] | None = Field(
        None, description="Learning-rate schedule [linear]."
    )
    gradient_checkpointing: bool | None = Field(None, description="Trade compute for memory [false].")
    max_sequence_length: int | None = Field(
        None, ge=8, le=131072, description="Tokens per row; validation fails rows that are longer [2048]."
    )
    logging_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Report progress every N steps [5].")
    eval_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Evaluate every N steps [once per epoch].")
    save_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Checkpoint every N steps [at the end only].")
    validation_split: float | None = Field(
        None, ge=0, lt=0.5, description="Held out from training when no validation dataset is attached [0.1]."
    )
    assistant_only_loss: bool | None = Field(None, description="Chat data: learn only assistant tokens [true].")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed [42].")
    training_type: TrainingType | None = Field(
        None, description="sft | dpo [dpo for provider 'dpo', else sft]; dpo runs on the DPO service."
    )
    method: Method | None = Field(None, description="lora | qlora | full [lora].")
    lora_r: int | None = Field(
        None, gt=0, le=1024, validation_alias=AliasChoices("lora_r", "rank"), description="LoRA rank (alias: rank) [16]."
    )
    lora_alpha: int | None = Field(None, gt=0, le=4096, description="LoRA alpha [32].")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="LoRA dropout [0.05].")
    target_modules: ModuleNames | Literal["all-linear"] | None = Field(
        None, description="Modules LoRA wraps [the architecture's attention projections]."
    )
    trainable_layers: ModuleNames | None = Field(None, description="method=full: only parameters matching these train.")
    precision: Precision | None = Field(None, description="bf16 | fp16 | fp32 [bf16, fp32 where unsupported].")
    beta: float | None = Field(None, gt=0, le=10, description="DPO temperature [0.1].")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] | None = Field(None, description="DPO loss [sigmoid].")
    max_prompt_length: int | None = Field(None, ge=8, le=131072, description="DPO: prompt tokens kept [all].")

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
        """The trainer service's ``POST /train`` body for this finetune: the one place the mapping lives.

        Raises:
            pydantic.ValidationError: the combination breaks a rule of TrainingRequest.
        """
        given = self.model_dump(exclude_none=True, mode="json")
        tuning = {name: given[name] for name in _TUNING_NAMES if name in given}
        if "epochs" in given:
            tuning["num_epochs"] = given["epochs"]
        customization = {dst: given[src] for src, dst in _CUSTOMIZATION_NAMES.items() if src in given}
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
                "customization": customization,
                "resources": resources.model_dump() if resources else {},
                "datasets": datasets,
                "artifacts": {"output_uri": output_uri, "log_uri": log_uri},
                "tuning_parameters": tuning,
                "labels": labels,
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


class FinetuneEventPublic(BaseModel):
    id: int
    finetune_id: str
    created_at: datetime
    level: EventLevel
    type: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


