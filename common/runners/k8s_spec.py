"""The Kubernetes objects of one training job, built as pure functions of its row and settings.

Nothing here talks to an API server: ``build_job`` and ``build_job_secret`` turn a claimed job
row into a batch/v1 Job and its per-job Secret, and the runner (``common.runners.kubernetes``)
creates, reads and deletes them. Each piece (command, environment, resources, volumes, failure
policy) has its own function so it can be read and tested alone.

Secrets never enter the Job spec nor the pod's environment: the request's secrets and the
progress token live in the per-job Secret (``<job>-env``) mounted read-only as the job's secrets
file (``common.jobsecrets``, mode 0400 for the job's user and group); deployment-wide
credentials (S3 keys, HF_TOKEN) come from the Secrets named by
``settings.k8s_job_env_secrets`` through ``envFrom``.

``resources.gpus > 1`` runs ``torchrun --standalone --nproc_per_node=N`` inside one pod (data
parallel, one process per GPU; only rank 0 reports and uploads).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from common import exitcodes, jobsecrets
from common.errors import RunnerError
from common.runners.resources import job_resources
from common.settings import Settings

CONTAINER = "train"
LABEL_JOB_ID = "trainyard.dev/job-id"
LABEL_BACKEND = "trainyard.dev/backend"
LABEL_WORKSPACE = "trainyard.dev/workspace"
MANAGED_LABELS = {
    "app.kubernetes.io/name": "trainyard",
    "app.kubernetes.io/component": "training-job",
    "app.kubernetes.io/managed-by": "trainyard",
}
# Where the per-job Secret is mounted, and its one key: the job's secrets file.
SECRETS_DIR = "/var/run/trainyard/job"
SECRETS_KEY = "secrets.json"
SECRETS_MODE = 0o400
# Exit codes no retry can fix: the pod failure policy fails the Job at once.
FAIL_FAST_EXIT_CODES = sorted({exitcodes.INVALID_INPUT, exitcodes.MODEL_LOAD, exitcodes.OOM})
RUN_AS = 10001  # the uid of the training image's user (docker/train.Dockerfile)
SCRATCH = "/scratch"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# --------------------------------------------------------------------------- names and labels


def job_name(job_id: str) -> str:
    """``trainyard-<job id>``, shortened with a hash so it stays a 63-char DNS label."""
    name = f"trainyard-{job_id}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return f"trainyard-{job_id[:43].rstrip('-')}-{digest}"


def secret_name(name: str) -> str:
    return f"{name}-env"


def is_label_value(value: str) -> bool:
    """Whether ``value`` may be a Kubernetes label value (63 characters, alphanumeric ends)."""
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def job_labels(job_id: str, backend: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """The managed labels plus the job's id, backend and (when it is a valid label value) workspace."""
    out = {**MANAGED_LABELS, LABEL_JOB_ID: job_id, LABEL_BACKEND: backend}
    workspace = (labels or {}).get("workspace") or (labels or {}).get("workspace_id")
    if workspace and is_label_value(workspace):
        out[LABEL_WORKSPACE] = workspace
    return out


def label_selector(backend: str, job_id: str | None = None) -> str:
    """Selects the Jobs (and their pods) this deployment runs for ``backend``, or one job's."""
    parts = [f"{k}={v}" for k, v in MANAGED_LABELS.items()] + [f"{LABEL_BACKEND}={backend}"]
    if job_id:
        parts.append(f"{LABEL_JOB_ID}={job_id}")
    return ",".join(parts)


# --------------------------------------------------------------------------- the container


def image_for(settings: Settings, backend: str) -> str:
    return settings.k8s_images.get(backend) or settings.k8s_image


def train_command(gpus: int, spec_uri: str) -> list[str]:
    """One process, or one per GPU with torchrun (the program reports from rank 0 only)."""
    if gpus > 1:
        return ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={gpus}", "-m", "common.train", spec_uri]
    return ["python", "-m", "common.train", spec_uri]


def cpu_quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


def memory_quantity(gb: float) -> str:
    return f"{int(gb)}Gi" if float(gb).is_integer() else f"{math.ceil(gb * 1024)}Mi"


def container_env(env: Mapping[str, str]) -> list[client.V1EnvVar]:
    """The runner's plain job environment plus where the pod finds its secrets file and scratch space."""
    plain = dict(env)
    plain.update({
        jobsecrets.FILE_ENV: f"{SECRETS_DIR}/{SECRETS_KEY}",
        "TRAINYARD_RUNNER": "kubernetes",
        "TRAINYARD_WORK_DIR": f"{SCRATCH}/work",
        "HF_HOME": f"{SCRATCH}/hf",
        "PYTHONUNBUFFERED": "1",
    })
    return [client.V1EnvVar(name=k, value=v) for k, v in sorted(plain.items())]


def container_resources(gpus: int, cpus: float, memory_gb: float) -> client.V1ResourceRequirements:
    """Requests for the scheduler; a memory limit equal to the request (OOM is the job's, not the node's)."""
    requests = {"cpu": cpu_quantity(cpus), "memory": memory_quantity(memory_gb)}
    limits = {"memory": memory_quantity(memory_gb)}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return client.V1ResourceRequirements(requests=requests, limits=limits)


def volume_mounts() -> list[client.V1VolumeMount]:
    return [
        client.V1VolumeMount(name="scratch", mount_path=SCRATCH),
        client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),  # NCCL and dataloader workers need more than 64 MiB
        client.V1VolumeMount(name="job-secrets", mount_path=SECRETS_DIR, read_only=True),
    ]


def volumes(name: str, memory_gb: float) -> list[client.V1Volume]:
    """Scratch space, a RAM-backed /dev/shm (a quarter of the memory, at least 1 GiB), the secrets file."""
    return [
        client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource()),
        client.V1Volume(
            name="dshm",
            empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=memory_quantity(max(1.0, memory_gb / 4))),
        ),
        client.V1Volume(
            name="job-secrets",
            secret=client.V1SecretVolumeSource(
                secret_name=secret_name(name), default_mode=SECRETS_MODE,
                items=[client.V1KeyToPath(key=SECRETS_KEY, path=SECRETS_KEY)],
            ),
        ),
    ]


# --------------------------------------------------------------------------- the Job


def node_selector(settings: Settings, job_id: str, gpu_type: str | None) -> dict[str, str]:
    """The deployment's node selector, plus the GPU-type label when the request names one.

    Raises: RunnerError when ``gpu_type`` is no valid node label value.
    """
    selector = dict(settings.k8s_node_selector)
    if gpu_type:
        if not is_label_value(gpu_type):
            raise RunnerError(f"resources.gpu_type '{gpu_type}' of job '{job_id}' is not a valid node label value")
        selector[settings.k8s_gpu_type_label] = gpu_type
    return selector


def pod_failure_policy() -> client.V1PodFailurePolicy:
    """Disruptions replace the pod without counting; exit codes no retry can fix fail the Job at once."""
    return client.V1PodFailurePolicy(
        rules=[
            # node drain, preemption, eviction: replace the pod, do not count a failure
            client.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
            # bad input, unloadable model, OOM inside the program: a retry would fail the same way
            client.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER, operator="In", values=FAIL_FAST_EXIT_CODES
                ),
            ),
        ]
    )


def build_job(settings: Settings, row: Any, env: dict[str, str], *, replica: str = "") -> client.V1Job:
    """The batch/v1 Job for one claimed job row (``id``, ``backend``, ``request``, ``labels``, ``spec_uri``).

    ``env`` is the runner's plain job environment; the secrets come from the per-job Secret,
    mounted as the job's secrets file. Resources the request leaves out take the schema's defaults.

    Raises: RunnerError when the request cannot be expressed as a Job (e.g. a gpu_type
    that is no valid node label value).
    """
    job_id, backend = row["id"], row["backend"]
    res = job_resources(row["request"])
    gpus, memory_gb = int(res.gpus), float(res.memory_gb)
    name = job_name(job_id)
    labels = job_labels(job_id, backend, row.get("labels"))
    selector = node_selector(settings, job_id, res.gpu_type)

    container = client.V1Container(
        name=CONTAINER,
        image=image_for(settings, backend),
        image_pull_policy=settings.k8s_image_pull_policy,
        command=train_command(gpus, row["spec_uri"]),
        env=container_env(env),
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=s)) for s in settings.k8s_job_env_secrets],
        resources=container_resources(gpus, float(res.cpus), memory_gb),
        volume_mounts=volume_mounts(),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"])
        ),
    )
    pod = client.V1PodSpec(
        restart_policy="Never",  # retries are the Job's (backoffLimit, podFailurePolicy), not the kubelet's
        service_account_name=settings.k8s_service_account or None,
        automount_service_account_token=False,  # the program never talks to the API server
        termination_grace_period_seconds=max(1, math.ceil(settings.cancel_grace_seconds)),
        containers=[container],
        node_selector=selector or None,
        tolerations=[client.V1Toleration.from_dict(t) for t in settings.k8s_tolerations] or None,
        image_pull_secrets=[client.V1LocalObjectReference(name=s) for s in settings.k8s_image_pull_secrets] or None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=RUN_AS, run_as_group=RUN_AS, fs_group=RUN_AS,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=volumes(name, memory_gb),
    )
    annotations = {"trainyard.dev/spec-uri": row["spec_uri"]}
    if replica:
        annotations["trainyard.dev/launched-by"] = replica
    if res.gpu_type:
        annotations["trainyard.dev/gpu-type"] = res.gpu_type
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name=name, namespace=settings.k8s_namespace, labels=labels, annotations=annotations),
        spec=client.V1JobSpec(
            backoff_limit=settings.k8s_backoff_limit,
            active_deadline_seconds=int(res.max_duration_minutes) * 60,
            ttl_seconds_after_finished=settings.k8s_ttl_seconds_after_finished,
            pod_failure_policy=pod_failure_policy(),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels, annotations=annotations), spec=pod
            ),
        ),
    )


def build_job_secret(
    settings: Settings, job: client.V1Job, secrets: str, owner_uid: str | None = None
) -> client.V1Secret:
    """The per-job Secret mounted as the job's secrets file (``secrets``: the runner's
    ``job_secrets`` JSON); owned by the Job when ``owner_uid`` is given, so deleting the Job
    (cancel, TTL) deletes it."""
    owners = None
    if owner_uid:
        owners = [client.V1OwnerReference(api_version="batch/v1", kind="Job", name=job.metadata.name, uid=owner_uid)]
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=secret_name(job.metadata.name),
            namespace=settings.k8s_namespace,
            labels=dict(job.metadata.labels or {}),
            owner_references=owners,
        ),
        string_data={SECRETS_KEY: secrets},
    )
