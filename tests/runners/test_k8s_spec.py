"""The Job-spec builders as pure functions: a job row and settings in, Kubernetes objects out.

No API server is involved; quantities are checked with the kubernetes client's own parser and
defaults against the schema, so the expectations are derived, not restated.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from kubernetes import client
from kubernetes.utils import parse_quantity

from common import db, exitcodes, jobsecrets
from common.runners.base import run_deadline
from common.runners.k8s_spec import (
    CONTAINER,
    LABEL_JOB_ID,
    LABEL_WORKSPACE,
    SECRETS_DIR,
    SECRETS_KEY,
    SECRETS_MODE,
    build_job,
    build_job_secret,
    container_env,
    cpu_quantity,
    job_labels,
    job_name,
    label_selector,
    memory_quantity,
    node_selector,
    pod_failure_policy,
    train_command,
    volume_mounts,
    volumes,
)
from common.runners.resources import job_resources, max_duration_seconds
from common.schemas import Resources
from common.settings import Settings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ROW = {"id": "job-1", "backend": "huggingface", "spec_uri": "s3://b/jobs/job-1/spec.json", "labels": {}, "request": {}}


def test_job_names_are_dns_labels_and_stay_distinct() -> None:
    assert job_name("job-1") == "trainyard-job-1"
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    names = {job_name(long_a), job_name(long_b)}
    assert len(names) == 2
    assert all(len(n) <= 63 and DNS_LABEL.match(n) for n in names)
    assert job_name(long_a) == job_name(long_a)


def test_labels_carry_a_valid_workspace_only_and_the_selector_picks_them() -> None:
    labels = job_labels("job-1", "dpo", {"workspace_id": "ws-1"})
    assert labels[LABEL_WORKSPACE] == "ws-1" and labels[LABEL_JOB_ID] == "job-1"
    for bad in ("has space", "x" * 64, "-edge"):
        assert LABEL_WORKSPACE not in job_labels("job-1", "dpo", {"workspace": bad})
    for selector in (label_selector("dpo"), label_selector("dpo", "job-1")):
        terms = dict(term.split("=", 1) for term in selector.split(","))
        assert terms.items() <= labels.items()
    assert not dict(t.split("=", 1) for t in label_selector("huggingface").split(",")).items() <= labels.items()


@pytest.mark.parametrize("value", [0.5, 1, 1.25, 4, 96, 0.001])
def test_quantities_parse_back_to_what_was_asked(value: float) -> None:
    assert parse_quantity(cpu_quantity(value)) == Decimal(str(value))
    assert parse_quantity(memory_quantity(value)) >= Decimal(str(value)) * 1024**3
    assert parse_quantity(memory_quantity(value)) - Decimal(str(value)) * 1024**3 < 1024**2  # rounded up to 1 MiB


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
def test_train_command_runs_one_process_per_gpu(gpus: int) -> None:
    command = train_command(gpus, "s3://b/spec.json")
    assert command[-3:] == ["-m", "common.train", "s3://b/spec.json"]
    assert (command[0] == "torchrun") == (gpus > 1)
    if gpus > 1:
        assert f"--nproc_per_node={gpus}" in command and "--standalone" in command


def test_env_points_at_the_secrets_file_and_keeps_the_runners_env() -> None:
    env = {e.name: e.value for e in container_env({"TRAINYARD_JOB_ID": "job-1", "TRAINYARD_RUNNER": "local"})}
    assert env["TRAINYARD_JOB_ID"] == "job-1"
    assert env["TRAINYARD_RUNNER"] == "kubernetes"
    assert env[jobsecrets.FILE_ENV] == f"{SECRETS_DIR}/{SECRETS_KEY}"
    assert list(env) == sorted(env)


@pytest.mark.parametrize("memory_gb", [1.5, 16, 1024])
def test_every_mount_has_a_volume_and_the_secret_is_read_only(memory_gb: float) -> None:
    vols = {v.name: v for v in volumes("trainyard-job-1", memory_gb)}
    mounts = {m.name: m for m in volume_mounts()}
    assert mounts.keys() == vols.keys()
    secret = vols["job-secrets"].secret
    assert secret.secret_name == "trainyard-job-1-env" and secret.default_mode == SECRETS_MODE
    assert [(i.key, i.path) for i in secret.items] == [(SECRETS_KEY, SECRETS_KEY)]
    assert mounts["job-secrets"].read_only and mounts["job-secrets"].mount_path == SECRETS_DIR
    shm = parse_quantity(vols["dshm"].empty_dir.size_limit)
    assert shm >= Decimal(str(max(1.0, memory_gb / 4))) * 1024**3


def test_failure_policy_fails_fast_on_what_no_retry_fixes() -> None:
    ignore, fail = pod_failure_policy().rules
    assert ignore.action == "Ignore" and ignore.on_pod_conditions[0].type == "DisruptionTarget"
    assert fail.action == "FailJob" and fail.on_exit_codes.container_name == CONTAINER
    assert set(fail.on_exit_codes.values) == {exitcodes.INVALID_INPUT, exitcodes.MODEL_LOAD, exitcodes.OOM}


def test_node_selector_adds_the_gpu_type_to_the_deployments() -> None:
    settings = Settings(k8s_node_selector={"pool": "gpu"})
    assert node_selector(settings, "job-1", None) == {"pool": "gpu"}
    assert node_selector(settings, "job-1", "H100") == {"pool": "gpu", settings.k8s_gpu_type_label: "H100"}


@pytest.mark.parametrize("request_", [{}, None, {"resources": {}}, {"resources": None}])
def test_a_request_without_resources_gets_the_schemas_defaults(request_: dict[str, Any] | None) -> None:
    defaults = Resources()
    assert job_resources(request_) == defaults
    job = build_job(Settings(), {**ROW, "request": request_}, {})
    assert job.spec.active_deadline_seconds == defaults.max_duration_minutes * 60 == max_duration_seconds(request_)
    [ctr] = job.spec.template.spec.containers
    assert ctr.resources.requests == {"cpu": cpu_quantity(defaults.cpus), "memory": memory_quantity(defaults.memory_gb)}
    assert ctr.command == train_command(defaults.gpus, ROW["spec_uri"])


def test_the_job_uses_its_pieces() -> None:
    settings = Settings(k8s_namespace="ns")
    request = {"resources": {"gpus": 2, "gpu_type": "A100", "cpus": 8, "memory_gb": 64, "max_duration_minutes": 90}}
    job = build_job(settings, {**ROW, "request": request}, {"A": "1"}, replica="svc-0:1")
    pod = job.spec.template.spec
    [ctr] = pod.containers
    assert job.spec.active_deadline_seconds == 90 * 60
    assert job.spec.pod_failure_policy == pod_failure_policy()
    assert ctr.command == train_command(2, ROW["spec_uri"])
    assert ctr.env == container_env({"A": "1"})
    assert pod.volumes == volumes(job.metadata.name, 64) and ctr.volume_mounts == volume_mounts()
    assert pod.node_selector == node_selector(settings, "job-1", "A100")
    assert job.metadata.annotations["trainyard.dev/launched-by"] == "svc-0:1"
    secret = build_job_secret(settings, job, "{}")
    assert secret.metadata.owner_references is None and secret.metadata.labels == job.metadata.labels
    assert isinstance(secret, client.V1Secret) and secret.string_data == {SECRETS_KEY: "{}"}


def test_run_deadline_counts_from_the_start() -> None:
    request = {"resources": {"max_duration_minutes": 30}}
    before = time.monotonic()
    fresh = run_deadline({"request": request, "started_at": None})
    ran = run_deadline({"request": request, "started_at": db.utcnow() - timedelta(minutes=10)})
    after = time.monotonic()
    assert before + 30 * 60 <= fresh <= after + 30 * 60
    assert fresh - 10 * 60 - (after - before) - 1 <= ran <= fresh - 10 * 60 + (after - before) + 1
