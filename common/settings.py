"""One Settings object, env prefix TRAINYARD_, defaults that run on a laptop.

Every process (gateway, trainer services, the training program) reads the same
names, so docker-compose, k8s ConfigMaps and the local Makefile agree.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where the project's code lives: a source checkout's root, or site-packages when installed.
PROJECT_HOME = Path(__file__).resolve().parents[1]
VAR = "var"  # the directory under ``home`` that holds local state (database, objects, logs, run files)
SERVICE_URL_ENV = "TRAINYARD_SERVICE_URL_"  # + NAME: one entry of service_urls (the older, per-service form)


def default_home() -> Path:
    """The source checkout's root; for an installed package (no checkout) the working directory."""
    return PROJECT_HOME if (PROJECT_HOME / "pyproject.toml").is_file() else Path.cwd()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="TRAINYARD_HOME: every default local path (var/...) lies under it, wherever a process starts. "
        "Default: the source checkout's root (an installed package: the working directory).",
    )

    # persistence
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{data['home'] / VAR / 'trainyard.db'}",
        description="SQLAlchemy URL: SQLite file by default, postgresql+psycopg://... in a cluster.",
    )

    # object storage
    storage_root: Path = Field(
        default_factory=lambda data: data["home"] / VAR / "objects",
        description="Root of file:// storage; file URIs outside it are refused.",
    )
    storage_url: str = Field(
        default="",
        description="Where new objects go: file:///abs/path or s3://bucket/prefix. "
        "Empty means file:// under storage_root. An s3:// bucket must exist: the gateway and the trainer "
        "services stop at start, naming it, when it does not.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="MinIO/moto/other S3 endpoint.")
    s3_region: str = Field(default="us-east-1", description="Region of the S3 client (signing and presigned URLs).")

    # what a request may name (common/modelrefs.py, common/outbound.py, common/bodylimit.py)
    model_dirs: list[Path] = Field(
        default_factory=lambda data: [data["home"] / VAR / "models"],
        description='Directories a request may name a local base model under (JSON list, e.g. ["/models"]).',
    )
    model_hub_check: bool = Field(
        default=True,
        description="Check at create time that a hub id outside the catalog exists on the hub (HF_ENDPOINT); "
        "where no hub can be reached such an id is refused. Set false where jobs reach a hub the gateway cannot.",
    )
    outbound_allow: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description='CIDR ranges request URLs (webhooks) may reach although private or loopback, e.g. ["127.0.0.0/8"].',
    )
    max_request_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body read by any route except the upload routes (413 above)."
    )
    idempotency_ttl_seconds: int = Field(
        default=24 * 3600, gt=0, description="How long an Idempotency-Key's first response is kept and replayed."
    )

    # runner
    runner: str = Field(default="local", description="local | kubernetes")
    local_slots: int = Field(default=1, ge=1, description="Concurrent local training processes.")
    log_dir: Path = Field(default_factory=lambda data: data["home"] / VAR / "logs", description="Local training jobs' log files.")
    cancel_grace_seconds: float = Field(default=10.0, gt=0, description="How long a cancelled job may stop by itself before it is killed.")
    python_executable: str = Field(default="", description="Interpreter for the training program.")

    # base models (common/catalog.py)
    models_dir: Path = Field(default_factory=lambda data: data["home"] / VAR / "models", description="Where locally built models live (`make model`).")
    model_catalog: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Extra or overriding base-model catalog entries, JSON {"<id>": {"path": ..., "gguf_file": ..., '
        '"description": ...}}; path is a local directory or a hub id.',
    )

    # this service's own address, as a job should reach it for progress reports
    public_url: str = Field(
        default="", description="Base URL jobs POST progress to (the report listener); default http://127.0.0.1:<report port>."
    )
    port: int = Field(default=8081, description="Port this process listens on (used for the default public_url); "
                      "`trainyard serve` sets it from --port, else keeps it, else uses the component's own port.")

    # ---------------------------------------------------------------- service credentials (docs/security.md)
    service_token: SecretStr | None = Field(
        default=None, description="TRAINYARD_SERVICE_TOKEN: the gateway's credential on every trainer-service route "
        "but /health (Authorization: Bearer). A service without one refuses to start unless dev_mode is set."
    )
    dev_mode: bool = Field(
        default=False, description="TRAINYARD_DEV_MODE=1: let a trainer service run without a service token "
        "(any caller may use it). Never in a shared deployment."
    )
    report_host: str = Field(default="127.0.0.1", description="Interface of the job progress-report listener.")
    report_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the job progress-report listener (the only port training "
        "jobs may reach); 0: a free port chosen at start."
    )
    secret_keys: list[SecretStr] = Field(
        default_factory=list, description="TRAINYARD_SECRET_KEYS: Fernet keys (JSON list) that encrypt secret "
        "columns. The first encrypts, any decrypts: prepend a new key to rotate. Empty: a generated key file "
        "under var/run (dev_mode only)."
    )

    # ---------------------------------------------------------------- Kubernetes runner
    # Read by common/runners/kubernetes.py when TRAINYARD_RUNNER=kubernetes; k8s/base/configmap.yaml
    # sets them for a cluster. Dicts and lists are JSON in the environment.
    k8s_namespace: str = Field(default="trainyard", description="Namespace of the training Jobs (and of the services).")
    k8s_config: Literal["auto", "in-cluster", "kubeconfig"] = Field(
        default="auto", description="How the runner reaches the API server: auto tries in-cluster, then kubeconfig."
    )
    k8s_kubeconfig: str = Field(default="", description="kubeconfig file (k8s_config=kubeconfig); empty: $KUBECONFIG or ~/.kube/config.")
    k8s_context: str = Field(default="", description="kubeconfig context; empty: the current one.")
    k8s_image: str = Field(default="ghcr.io/trainyard/train:0.1.0", description="Training image for backends without their own.")
    k8s_images: dict[str, str] = Field(
        default_factory=dict, description='Training image per backend, e.g. {"unsloth": "ghcr.io/trainyard/train-unsloth:0.1.0"}.'
    )
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent", description="imagePullPolicy of the training pods.")
    k8s_image_pull_secrets: list[str] = Field(default_factory=list, description="Secret names for a private registry.")
    k8s_service_account: str = Field(default="trainyard-job", description="ServiceAccount of the training pods (e.g. for IRSA); no API rights needed.")
    k8s_node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of every training pod.")
    k8s_gpu_type_label: str = Field(
        default="trainyard.dev/gpu-type", description="Node label matched against resources.gpu_type (when the request sets it)."
    )
    k8s_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of every training pod (Kubernetes JSON form).",
    )
    k8s_job_env_secrets: list[str] = Field(
        default_factory=lambda: ["trainyard-storage", "trainyard-hf"],
        description="Deployment-wide Secrets mounted into every training pod with envFrom (S3 keys, HF_TOKEN).",
    )
    k8s_backoff_limit: int = Field(default=0, ge=0, description="Pod failures retried per Job (node disruptions never count).")
    k8s_ttl_seconds_after_finished: int = Field(default=3600, ge=0, description="Finished Jobs (and their pods, logs) kept this long.")
    k8s_max_active_jobs: int = Field(default=32, ge=1, description="Jobs one service replica keeps launched at once; the cluster queues the pods.")
    k8s_poll_seconds: float = Field(default=5.0, gt=0, description="How often a replica reads the state of its Jobs.")
    k8s_start_grace_seconds: float = Field(
        default=120.0, ge=0, description="How long a pod may sit in ImagePullBackOff/CreateContainerConfigError before the job fails."
    )
    k8s_request_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each Kubernetes API call.")

    # ---------------------------------------------------------------- gateway
    # Read by gateway/ only. Secrets are SecretStr (never printed); the gateway refuses to start on a
    # placeholder value (gateway.auth.check_secrets).
    gateway_serve_internal: bool = Field(
        default=True,
        description="Also mount /v1/dataservice/* on the public gateway. Set false in a cluster and run "
        "gateway-internal on its own port, reachable only inside the cluster.",
    )
    gateway_public_url: str = Field(
        default="", description="Base URL users reach the gateway at, for signed upload URLs; default: the request's."
    )
    service_urls: dict[str, str] = Field(
        default_factory=dict,
        description='TRAINYARD_SERVICE_URLS: base URL of each service by name (JSON, e.g. {"dpo": "http://dpo:8083"}); '
        "a service left out keeps its local default (http://127.0.0.1:<its port>). TRAINYARD_SERVICE_URL_<NAME> "
        "(e.g. TRAINYARD_SERVICE_URL_DPO) sets one entry and wins over the mapping.",
    )
    service_timeout_seconds: float = Field(default=10.0, gt=0, description="Deadline of each gateway -> service call.")
    inference_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Deadline of a gateway -> inference call (a generation, or the wait between streamed chunks)."
    )
    inference_export_timeout_seconds: float = Field(default=3600.0, gt=0, description="Deadline of an export (merge + upload).")
    admin_api_key: SecretStr | None = Field(
        default=None, description="TRAINYARD_ADMIN_API_KEY: seeded (hashed) on start as a key with every scope."
    )
    admin_workspace: str = Field(default="default", description="Workspace of the seeded admin key.")
    internal_token: SecretStr | None = Field(
        default=None, description="TRAINYARD_INTERNAL_TOKEN: the control plane's credential for /v1/dataservice/*; "
        "unset disables the internal API."
    )
    upload_signing_secret: SecretStr | None = Field(
        default=None, description="HMAC key of gateway upload URLs; unset: a random per-process key (URLs die on restart)."
    )
    upload_url_ttl_seconds: int = Field(
        default=900, gt=0, le=24 * 3600, description="Lifetime of a signed upload URL (each URL also works only once)."
    )
    download_url_ttl_seconds: int = Field(
        default=900, gt=0, le=24 * 3600, description="Lifetime of a signed download URL of a finetune's output files."
    )
    max_upload_bytes: int = Field(default=5 * 1024**3, gt=0, description="Largest dataset file accepted by an upload URL.")
    max_direct_upload_bytes: int = Field(
        default=100 * 1024**2, gt=0, description="Largest file accepted by the multipart POST /v1/datasets/upload."
    )
    validation_max_rows: int = Field(default=10_000_000, gt=0, description="Datasets with more rows fail validation.")
    validation_max_errors: int = Field(default=50, gt=0, le=10_000, description="Errors listed per file (all are counted).")
    validation_workers: int = Field(default=1, ge=1, le=16, description="Concurrent dataset validations per gateway.")
    refresh_interval_seconds: float = Field(default=2.0, gt=0, description="How often active finetunes mirror their job.")

    # ---------------------------------------------------------------- inference service (services/inference)
    inference_engine: Literal["transformers"] = Field(default="transformers", description="Engine of the inference worker.")
    inference_max_loaded_bases: int = Field(default=2, ge=1, description="Base models kept in memory (least recently used go).")
    inference_max_adapters: int = Field(default=8, ge=1, description="LoRA adapters kept attached per loaded base.")
    inference_default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when a request sets none.")
    inference_cache_dir: Path = Field(default_factory=lambda data: data["home"] / VAR / "cache" / "inference",
                                      description="Local copies of adapters and exports in progress.")
    inference_threads: int = Field(default=0, ge=0, description="Torch CPU threads of the worker; 0: torch's default.")

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @model_validator(mode="after")
    def _complete_service_urls(self) -> Settings:
        """Every known service gets a URL: the local default, then the mapping, then TRAINYARD_SERVICE_URL_<NAME>."""
        from common.components import default_service_urls  # reads the entry points, which import this module

        urls = {**default_service_urls(), **self.service_urls}
        for key, value in os.environ.items():
            if key.upper().startswith(SERVICE_URL_ENV) and value:
                urls[key[len(SERVICE_URL_ENV):].lower()] = value
        self.service_urls = {name: url.rstrip("/") for name, url in urls.items()}
        return self

    def service_url(self, name: str) -> str | None:
        return self.service_urls.get(name)

    def progress_base(self, report_port: int | None = None) -> str:
        """Where jobs send progress: public_url, else the report listener on this host."""
        return (self.public_url or f"http://127.0.0.1:{report_port or self.report_port}").rstrip("/")

    def object_base(self) -> str:
        return self.storage_url.rstrip("/") if self.storage_url else self.storage_root.as_uri()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def env_names() -> frozenset[str]:
    """Every environment name Settings reads: one per field, plus TRAINYARD_SERVICE_URL_<NAME> per service."""
    from common.components import default_service_urls

    return frozenset(f"TRAINYARD_{name.upper()}" for name in Settings.model_fields) | {
        f"{SERVICE_URL_ENV}{name.upper()}" for name in default_service_urls()
    }


# Environment names of the settings that are credentials (every SecretStr field): a process never
# passes them on to a training job.
SECRET_ENV = frozenset(
    f"TRAINYARD_{name.upper()}" for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
)
