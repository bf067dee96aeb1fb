"""Request and response models, defined once and shared by gateway, services and jobs.

The training request follows the Training Studio contract field for field
(``shared/contracts/003``); extra knobs keep TRL's names. Secrets are ``SecretStr``
and write-only: ``public_request()`` strips them before anything is stored or shown.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

JOB_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


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
    provider: str = Field("huggingface", description="Where the weights come from (a hub id or a local/S3 path).")
    model_name: str = Field(..., min_length=1, description="Hub id, local directory, file:// or s3:// URI.")
    revision: str | None = Field("main", description="Hub revision (branch, tag or commit).")
    auth_token: SecretStr | None = Field(None, description="Write-only token for private weights.")
    huggingface_token: SecretStr | None = Field(None, description="Write-only Hugging Face token.")
    weights_url: str | None = Field(
        None, description="file:// or s3:// prefix with weights; overrides model_name for loading."
    )


class QLoRASpec(Strict):
    use_double_quant: bool = Field(True, description="bitsandbytes nested quantization.")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Compute dtype of the 4-bit layers."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"


class PeftSpec(Strict):
    use: bool = True
    config: dict[str, Any] = Field(default_factory=lambda: {"task_type": "CAUSAL_LM"})


class Customization(Strict):
    method: Method = Field(Method.lora, description="lora | qlora | full")
    rank: int = Field(16, gt=0, le=1024, description="LoRA rank r.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="Modules LoRA wraps; None picks the architecture's attention projections."
    )
    lora_alpha: int = Field(32, gt=0, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    trainable_layers: list[str] | None = Field(
        None, description="With method=full: only parameters whose names contain one of these train."
    )
    precision: Precision = Field(Precision.bf16, description="Falls back to fp32 where bf16/fp16 can't run.")
    qlora: QLoRASpec = Field(default_factory=QLoRASpec)
    peft: PeftSpec = Field(default_factory=PeftSpec)


class Resources(Strict):
    gpus: int = Field(0, ge=0, le=64)
    gpu_type: str | None = None
    cpus: float = Field(1, gt=0, le=512)
    memory_gb: float = Field(4, gt=0, le=4096)
    max_duration_minutes: int = Field(720, gt=0, le=60 * 24 * 14)


class DatasetSpec(Strict):
    source: str = Field(..., min_length=1, description="file:// or s3:// URI of a JSONL file.")
    format: Literal["jsonl"] = "jsonl"
    split: Literal["train", "validation"] = Field("train", description="Role of this file in training.")
    auth: dict[str, SecretStr] | None = Field(None, description="Write-only credentials (e.g. role_arn).")

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not (v.startswith("file://") or v.startswith("s3://")):
            raise ValueError("dataset source must be a file:// or s3:// URI")
        if any(seg == ".." for seg in v.split("/")):
            raise ValueError("dataset source must not contain '..' segments")
        return v


class Artifacts(Strict):
    log_uri: str | None = Field(None, description="Prefix the job's log is copied to.")
    status_stream_url: str | None = Field(None, description="Accepted for compatibility; events are served at /jobs/{id}/events.")
    output_uri: str | None = Field(None, description="Prefix for adapter, tokenizer, checkpoints, metrics.json.")

    @field_validator("log_uri", "output_uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not (v.startswith("file://") or v.startswith("s3://")):
            raise ValueError("artifact URIs must be file:// or s3:// prefixes")
        if any(seg == ".." for seg in v.split("/")):
            raise ValueError("artifact URIs must not contain '..' segments")
        return v


class TuningParameters(Strict):
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    batch_size: int = Field(8, gt=0, le=4096, description="Effective batch size (per device x accumulation).")
    per_device_batch_size: int | None = Field(None, gt=0, le=1024, description="Micro-batch; default min(batch_size, 8).")
    num_epochs: float = Field(3, gt=0, le=1000)
    max_steps: int | None = Field(None, gt=0, description="Overrides num_epochs when set.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    gradient_checkpointing: bool = False
    max_sequence_length: int = Field(2048, ge=8, le=131072)
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps; default once per epoch.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps; default at the end only.")
    validation_split: float = Field(0.1, ge=0, lt=0.5, description="Held out from train when no validation dataset.")
    assistant_only_loss: bool = Field(True, description="Chat data: learn only assistant tokens.")
    seed: int = 42
    # DPO (TRL names)
    beta: float = Field(0.1, gt=0, le=10, description="DPO temperature.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    max_prompt_length: int | None = Field(None, ge=8, description="DPO: prompt tokens kept (left-truncated).")


class Callbacks(Strict):
    webhook_url: str | None = Field(None, description="Receives a POST on every status change.")
    auth_header: SecretStr | None = Field(None, description="Write-only Authorization header for the webhook.")

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("webhook_url must be an http(s) URL")
        return v


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
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form tags (workspace, finetune id).")

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

    def secrets(self) -> dict[str, Any]:
        """Only the secrets, for the job's environment (never for logs or responses)."""
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
    message: str = ""
    progress: Progress | None = None
    metrics: dict[str, Any] | None = None
    data: dict[str, Any] = Field(default_factory=dict)


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
