"""The training request: the shared ``POST /train`` payload of every trainer service.

It keeps, field for field, the payload existing clients send; extra knobs keep TRL's names. Secrets
are ``SecretStr`` and write-only: ``public_request()`` strips them before anything is stored or shown.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field, field_validator, model_validator

from common.schemas.base import (
    MAX_DICT_ITEMS,
    MAX_MODEL_REF_CHARS,
    MAX_NAME_CHARS,
    MAX_SEED,
    MAX_STEPS,
    HttpUrl,
    Labels,
    ModuleNames,
    Secret,
    StorageUri,
    Strict,
    no_dot_dot,
)

JOB_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class TrainingType(StrEnum):
    sft = "sft"
    dpo = "dpo"


LrSchedulerType = Literal["linear", "cosine", "constant", "constant_with_warmup"]
LossType = Literal["sigmoid", "ipo", "hinge", "robust"]  # TRL's DPO losses offered
TargetModules: TypeAlias = ModuleNames | Literal["all-linear"]


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
    target_modules: TargetModules | None = Field(
        None, description="Modules LoRA wraps; unset, the architecture's attention projections."
    )
    lora_alpha: int = Field(32, gt=0, le=4096, description="LoRA alpha (the adapter's scale is alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    trainable_layers: ModuleNames | None = Field(
        None, description="With method=full: only parameters whose names contain one of these train."
    )
    precision: Precision = Field(Precision.bf16, description="bf16 | fp16 | fp32; falls back to fp32 where bf16/fp16 can't run.")
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
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(8, gt=0, le=4096, description="Effective batch size (per device x accumulation).")
    per_device_batch_size: int | None = Field(None, gt=0, le=1024, description="Micro-batch; default min(batch_size, 8).")
    num_epochs: float = Field(3, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="Optimizer steps; overrides the number of epochs when set."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps warming up.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay.")
    lr_scheduler_type: LrSchedulerType = Field("linear", description="Learning-rate schedule.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    max_sequence_length: int = Field(2048, ge=8, le=131072, description="Tokens per row; longer rows are truncated.")
    logging_steps: int = Field(5, gt=0, le=MAX_STEPS, description="Report progress every N steps.")
    eval_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Evaluate every N steps; default once per epoch.")
    save_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Checkpoint every N steps; default at the end only.")
    validation_split: float = Field(
        0.1, ge=0, lt=0.5, description="Fraction held out from training when no validation dataset is given."
    )
    assistant_only_loss: bool = Field(True, description="Chat data: learn only assistant tokens.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Random seed.")
    # DPO (TRL names)
    beta: float = Field(0.1, gt=0, le=10, description="DPO temperature.")
    loss_type: LossType = Field("sigmoid", description="DPO loss.")
    max_prompt_length: int | None = Field(
        None, ge=8, le=131072, description="DPO: prompt tokens kept (left-truncated); default all."
    )


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
