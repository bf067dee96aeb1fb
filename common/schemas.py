"""Request and response models, defined once and shared by gateway, services and jobs.

The training request keeps, field for field, the payload existing clients send to every trainer
service's ``POST /train``; extra knobs keep TRL's names. Secrets are ``SecretStr``
and write-only: ``public_request()`` strips them before anything is stored or shown.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common import components

JOB_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Size caps of request fields (docs/security.md lists them; the API spec shows each on its field).
MAX_URI_CHARS = 2048
MAX_MODEL_REF_CHARS = 1024
MAX_NAME_CHARS = 255
MAX_SECRET_CHARS = 8192
MAX_LIST_ITEMS = 64
MAX_MODULE_NAME_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 255
MAX_DICT_ITEMS = 32
MAX_REPORT_MESSAGE_CHARS = 4096
MAX_REPORT_ITEMS = 64
MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1
MAX_QUERY_INT = 2**31 - 1  # offsets and event cursors: far past any real list, well inside a 64-bit column
STORAGE_URI_PATTERN = r"^(file|s3)://"
HTTP_URL_PATTERN = r"^https?://"

StorageUri = Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS, pattern=STORAGE_URI_PATTERN)]
HttpUrl = Annotated[str, Field(max_length=MAX_URI_CHARS, pattern=HTTP_URL_PATTERN)]
ModuleName = Annotated[str, Field(min_length=1, max_length=MAX_MODULE_NAME_CHARS)]
ModuleNames = Annotated[list[ModuleName], Field(max_length=MAX_LIST_ITEMS)]
Secret = Annotated[SecretStr, Field(max_length=MAX_SECRET_CHARS)]
Labels = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_LABEL_VALUE_CHARS)],
    ],
    Field(max_length=MAX_LABELS),
]


def no_dot_dot(v: str | None) -> str | None:
    """Refuse ``..`` segments, also percent-encoded, so a URI never climbs out of its prefix."""
    if v is not None and any(unquote(seg) == ".." for seg in v.split("/")):
        raise ValueError("must not contain '..' segments (also not encoded as %2e%2e)")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- request


class Method(StrEnum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


class Precision(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class BaseModelSpec(Strict):
    provider: str = Field(
        "huggingface", max_length=64, description="Where the weights come from (a hub id or a local/S3 path)."
    )
    model_name: str = Field(
        ..., min_length=1, max_length=MAX_MODEL_REF_CHARS,
        description="Hub id (org/name), a directory under the configured model directories, or a storage URI "
        "of an earlier job's output.",
    )
    revision: str | None = Field("main", max_length=MAX_NAME_CHARS, description="Hub revision (branch, tag or commit).")
    auth_token: Secret | None = Field(None, description="Write-only token for private weights.")
    huggingface_token: Secret | None = Field(None, description="Write-only Hugging Face token.")
    weights_url: StorageUri | None = Field(
        None, description="file:// or s3:// prefix with weights; overrides model_name for loading."
    )

    _no_dot_dot = field_validator("weights_url")(no_dot_dot)


class QLoRASpec(Strict):
    use_double_quant: bool = Field(True, description="bitsandbytes nested quantization.")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Compute dtype of the 4-bit layers."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"


class PeftSpec(Strict):
    use: bool = True
    config: dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], Any] = Field(
        default_factory=lambda: {"task_type": "CAUSAL_LM"}, max_length=MAX_DICT_ITEMS
    )


class Customization(Strict):
    method: Method = Field(Method.lora, description="lora | qlora | full")
    rank: int = Field(16, gt=0, le=1024, description="LoRA rank r.")
    target_modules: ModuleNames | Literal["all-linear"] | None = Field(
        None, description="Modules LoRA wraps; None picks the architecture's attention projections."
    )
    lora_alpha: int = Field(32, gt=0, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    trainable_layers: ModuleNames | None = Field(
        None, description="With method=full: only parameters whose names contain one of these train."
    )
    precision: Precision = Field(Precision.bf16, description="Falls back to fp32 where bf16/fp16 can't run.")
    qlora: QLoRASpec = Field(default_factory=QLoRASpec)
    peft: PeftSpec = Field(default_factory=PeftSpec)


class Resources(Strict):
    gpus: int = Field(0, ge=0, le=64)
    gpu_type: str | None = Field(None, max_length=MAX_NAME_CHARS, description="GPU model wanted (a node label value).")
    cpus: float = Field(1, gt=0, le=512)
    memory_gb: float = Field(4, gt=0, le=4096)
    max_duration_minutes: int = Field(720, gt=0, le=60 * 24 * 14)


class DatasetSpec(Strict):
    source: StorageUri = Field(..., description="file:// or s3:// URI of a JSONL file.")
    format: Literal["jsonl"] = "jsonl"
    split: Literal["train", "validation"] = Field("train", description="Role of this file in training.")
    auth: Annotated[dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], Secret], Field(max_length=MAX_DICT_ITEMS)] | None = Field(
        None, description="Write-only credentials (e.g. role_arn)."
    )

    _no_dot_dot = field_validator("source")(no_dot_dot)


class Artifacts(Strict):
    log_uri: StorageUri | None = Field(None, description="Prefix the job's log is copied to.")
    status_stream_url: HttpUrl | None = Field(
        None, description="Accepted for compatibility (checked like webhook_url); events are served at /jobs/{id}/events."
    )
    output_uri: StorageUri | None = Field(None, description="Prefix for adapter, tokenizer, checkpoints, metrics.json.")

    _no_dot_dot = field_validator("log_uri", "output_uri")(no_dot_dot)


class TuningParameters(Strict):
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    batch_size: int = Field(8, gt=0, le=4096, description="Effective batch size (per device x accumulation).")
    per_device_batch_size: int | None = Field(None, gt=0, le=1024, description="Micro-batch; default min(batch_size, 8).")
    num_epochs: float = Field(3, gt=0, le=1000)
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Overrides num_epochs when set.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    gradient_checkpointing: bool = False
    max_sequence_length: int = Field(2048, ge=8, le=131072)
    logging_steps: int = Field(5, gt=0, le=MAX_STEPS)
    eval_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Evaluate every N steps; default once per epoch.")
    save_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Checkpoint every N steps; default at the end only.")
    validation_split: float = Field(0.1, ge=0, lt=0.5, description="Held out from train when no validation dataset.")
    assistant_only_loss: bool = Field(True, description="Chat data: learn only assistant tokens.")
    seed: int = Field(42, ge=0, le=MAX_SEED)
    # DPO (TRL names)
    beta: float = Field(0.1, gt=0, le=10, description="DPO temperature.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    max_prompt_length: int | None = Field(None, ge=8, le=131072, description="DPO: prompt tokens kept (left-truncated).")


class Callbacks(Strict):
    webhook_url: HttpUrl | None = Field(
        None, description="Receives a POST on every status change; must reach a public address (docs/security.md)."
    )
    auth_header: Secret | None = Field(None, description="Write-only Authorization header for the webhook.")


class TrainingRequest(Strict):
    """The shared ``POST /train`` payload."""

    job_id: str | None = Field(None, description="Unique id (lowercase DNS label); generated when omitted.")
    base_model: BaseModelSpec
    customization: Customization = Field(default_factory=Customization)
    resources: Resources = Field(default_factory=Resources)
    datasets: list[DatasetSpec] = Field(..., min_length=1, max_length=32)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    tuning_parameters: TuningParameters = Field(default_factory=TuningParameters)
    callbacks: Callbacks = Field(default_factory=Callbacks)
    labels: Labels = Field(default_factory=dict, description="Free-form tags (workspace, finetune id).")

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and not JOB_ID_RE.match(v):
            raise ValueError("job_id must be 1-63 chars of a-z, 0-9 and '-', starting and ending alphanumeric")
        return v

    @model_validator(mode="after")
    def _cross(self) -> TrainingRequest:
        if not any(d.split == "train" for d in self.datasets):
            raise ValueError("at least one dataset must have split 'train'")
        c = self.customization
        if c.method == Method.full and c.peft.use and c.peft.config.get("force"):
            raise ValueError("method 'full' does not use PEFT")
        return self

    def ensure_id(self) -> str:
        if not self.job_id:
            self.job_id = f"job-{uuid.uuid4().hex[:12]}"
        return self.job_id

    def public_request(self) -> dict[str, Any]:
        """The request as JSON with every secret removed (safe to store, log and return)."""
        data = self.model_dump(mode="json")
        data["base_model"].pop("auth_token", None)
        data["base_model"].pop("huggingface_token", None)
        for ds in data["datasets"]:
            ds.pop("auth", None)
        data["callbacks"].pop("auth_header", None)
        return data

    def digest(self) -> str:
        """SHA-256 of the whole request, secrets included, in a canonical form: the gateway and the
        service compute it alike, so the gateway adopts an existing job only when it is the one it
        sent (``JobPublic.request_digest``)."""
        canonical = json.dumps({"request": self.public_request(), "secrets": self.secrets()}, sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def secrets(self) -> dict[str, Any]:
        """Only the secrets, for the job's secrets file (never for logs or responses)."""
        out: dict[str, Any] = {}
        bm = self.base_model
        if bm.auth_token:
            out["auth_token"] = bm.auth_token.get_secret_value()
        if bm.huggingface_token:
            out["huggingface_token"] = bm.huggingface_token.get_secret_value()
        auth = {
            str(i): {k: v.get_secret_value() for k, v in d.auth.items()}
            for i, d in enumerate(self.datasets)
            if d.auth
        }
        if auth:
            out["dataset_auth"] = auth
        if self.callbacks.auth_header:
            out["webhook_auth_header"] = self.callbacks.auth_header.get_secret_value()
        return out


# --------------------------------------------------------------------------- jobs


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})

# The one transition table: status changes anywhere go through common.jobs.transition().
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.pending: frozenset({JobStatus.running, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.running: frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.completed: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


class Progress(BaseModel):
    epoch: float | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    percent: float = 0.0
    eval_loss: float | None = None
    tokens_seen: int | None = None


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_loss_before: float | None = None
    tokens_seen: int | None = None
    runtime_seconds: float | None = None
    tokens_per_second: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    backend: str
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    metrics: Metrics = Field(default_factory=Metrics)
    error: JobError | None = None
    output_uri: str | None = None
    log_uri: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    runner: str | None = Field(None, description="local | kubernetes")
    runner_ref: str | None = Field(None, description="host:pid (local) or the Kubernetes Job name.")
    request: dict[str, Any] = Field(default_factory=dict, description="The request, secrets removed.")
    request_digest: str | None = Field(
        None, description="SHA-256 of the request as submitted, secrets included (TrainingRequest.digest)."
    )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class EventLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class EventType(StrEnum):
    status = "status"
    progress = "progress"
    metrics = "metrics"
    log = "log"
    checkpoint = "checkpoint"


class EventPublic(BaseModel):
    id: int
    job_id: str
    created_at: datetime
    level: EventLevel
    type: EventType
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


class LogsPublic(BaseModel):
    job_id: str
    logs: list[str]
    count: int


class ProgressReport(Strict):
    """What the training program POSTs to the service's internal endpoint."""

    type: Literal["progress", "metrics", "log", "checkpoint", "started"]
    level: EventLevel = EventLevel.info
    message: str = Field("", max_length=MAX_REPORT_MESSAGE_CHARS)
    progress: Progress | None = None
    metrics: dict[str, Any] | None = Field(None, max_length=MAX_REPORT_ITEMS)
    data: dict[str, Any] = Field(default_factory=dict, max_length=MAX_REPORT_ITEMS)


class BackendInfo(BaseModel):
    backend: str
    methods: list[str]
    training_types: list[str]
    version: str
    available: bool
    unavailable_reason: str | None = None
    runner: str


class Health(BaseModel):
    status: Literal["healthy"] = "healthy"
    version: str


class ErrorBody(BaseModel):
    error: str
    detail: Any
    status_code: int


# =========================================================================== gateway
# Models of the gateway's /v1/datasets, /v1/finetune and /v1/dataservice/* APIs. Paths, field names
# and status strings are those the gateway's existing clients use (docs/gateway.md); everything a
# finetune adds on top (hyperparameters, progress, validation reports) uses the names above.
# This section is appended after the trainer models, hence its own imports.

from typing import Generic, TypeVar  # noqa: E402

from pydantic import AliasChoices  # noqa: E402

T = TypeVar("T")


_PROVIDER_DOC = "Which trainer service runs a finetune (unknown names are refused with 422)."
if TYPE_CHECKING:

    class Provider(StrEnum):
        """The trainer services' names (built from ``common.components`` when this module loads)."""

else:
    Provider = StrEnum("Provider", {name: name for name in components.trainer_names()})
    Provider.__doc__ = _PROVIDER_DOC


class TrainingType(StrEnum):
    sft = "sft"
    dpo = "dpo"


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


class ValidationIssue(BaseModel):
    line: int = Field(description="1-based line of the file; 0 for the file as a whole.")
    field: str = Field(description="The offending field, e.g. messages[2].role; '' for the row.")
    message: str


class TokenStats(BaseModel):
    tokenizer: str = Field(description="Where the tokenizer came from.")
    total: int
    max: int
    mean: float
    over_limit_rows: int = Field(description="Rows longer than the limit (each also listed as an error).")
    limit: int
    approximate: bool = Field(
        True, description="Counts are content tokens plus a fixed allowance per chat message for the template."
    )
    counted_rows: int = Field(0, description="Rows tokenized: a sample, plus every row long enough to break the limit.")
    estimated_rows: int = Field(0, description="Rows too short to break the limit, counted at the sample's tokens per byte.")


class ValidationReport(BaseModel):
    """One file's validation: totals plus the first ``max_errors`` problems by line."""

    valid: bool
    training_type: TrainingType
    format: str | None = Field(None, description="Row format found (messages, prompt_completion, text, preference, ...).")
    rows: int = 0
    bytes: int = 0
    errors: list[ValidationIssue] = Field(default_factory=list)
    errors_total: int = 0
    errors_truncated: bool = False
    tokens: TokenStats | None = None
    token_note: str | None = Field(None, description="Why tokens were not counted, when they were not.")
    duration_seconds: float = 0.0


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


# =========================================================================== models registry
# /v1/models: OpenAI's model object (id, object, created, owned_by) plus the registry's fields;
# names follow the model listing fine-tuning clients already read where they fit (training_params, metrics).

import math  # noqa: E402

from pydantic import computed_field  # noqa: E402


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
