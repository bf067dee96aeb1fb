"""KubernetesRunner against a schema-checked API double.

No Kubernetes cluster can run here (no API server, no container engine, no kind), so the
API server is the one boundary these tests replace: ``fake_apiserver.FakeApiServer``
serves the Kubernetes REST API over real HTTP, validates every object against the
official schemas (``kubernetes-validate``, strict), enforces the Role in
``k8s/base/rbac.yaml`` and simulates the Job controller and kubelet. Everything else is
real: the official ``kubernetes`` client configured from a kubeconfig, the runner's
dispatch loop, a SQLite database, ``file://`` storage and the HuggingFace backend's
request checks. ``make e2e-kind`` runs the same path against a real cluster.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import db, jobs
from common.outbound import OutboundPolicy
from common.runners import make_runner
from common.runners.base import RunnerDeps
from common.runners.k8s_spec import job_name
from common.runners.kubernetes import KubernetesRunner
from common.schemas import JobStatus, ProgressReport, TrainingRequest
from common.settings import Settings
from common.storage import ObjectStore
from services.huggingface.backend import HuggingFaceBackend
from tests.runners.fake_apiserver import FakeApiServer, role_rules
from tests.utils.factories import random_job_id
from tests.utils.server import SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "k8s" / "base" / "rbac.yaml"
HF_SECRET = "hf_SUPERSECRET_never_in_a_job_spec"
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer(role_rules(RBAC)).start()
    for name, data in (("trainyard-storage", {"AWS_ACCESS_KEY_ID": "minio"}), ("trainyard-hf", {"HF_TOKEN": "hf_x"})):
        server.create("Secret", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
    yield server
    server.stop()


@pytest.fixture
def settings(fake: FakeApiServer, tmp_path: Path) -> Settings:
    (tmp_path / "objects").mkdir()
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'trainyard.db'}",
        storage_root=tmp_path / "objects",
        runner="kubernetes",
        k8s_config="kubeconfig",
        k8s_kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
        k8s_start_grace_seconds=0,
        public_url="http://trainyard-huggingface.trainyard.svc:8081",
        cancel_grace_seconds=1,
        secret_keys=[SECRET_KEY],
    )


class Cluster:
    """One service replica's view: engine, store, runner; plus helpers to submit and step."""

    def __init__(self, settings: Settings, fake: FakeApiServer, host: str = "svc-a") -> None:
        self.settings, self.fake = settings, fake
        self.engine = db.make_engine(settings.database_url)
        db.init_db(self.engine)
        self.store = ObjectStore(settings)
        self.runner = self.replica(host)
        self.train_uri = self.store.default_uri("datasets", "train.jsonl")
        self.store.put_bytes(self.train_uri, ROW.encode() * 4)

    def replica(self, host: str) -> KubernetesRunner:
        runner = make_runner(RunnerDeps(self.engine, self.settings, self.store, "huggingface"))
        assert isinstance(runner, KubernetesRunner)
        runner.host, runner.replica = host, f"{host}:1"  # as if it ran in pod `host`
        return runner

    def submit(self, **overrides: Any) -> str:
        body: dict[str, Any] = {
            "job_id": random_job_id(),
            "base_model": {"model_name": "meta-llama/Llama-3.2-1B", "huggingface_token": HF_SECRET},
            "datasets": [{"source": self.train_uri}],
            "resources": {"gpus": 1, "cpus": 4, "memory_gb": 16, "max_duration_minutes": 60},
            "labels": {"workspace": "ws-1"},
        }
        body.update(overrides)
        return jobs.submit(self.engine, self.store, self.runner, HuggingFaceBackend(), TrainingRequest(**body), OutboundPolicy()).id

    def job(self, job_id: str) -> Any:
        return jobs.get(self.engine, job_id)

    def launch(self, **overrides: Any) -> tuple[str, str]:
        """Submit, tick once (claim + create Job), start its pod; returns (job id, pod name)."""
        job_id = self.submit(**overrides)
        self.runner.tick()
        assert self.job(job_id).status == JobStatus.running
        return job_id, self.fake.start_pod(job_name(job_id))


@pytest.fixture
def cluster(settings: Settings, fake: FakeApiServer) -> Iterator[Cluster]:
    c = Cluster(settings, fake)
    yield c
    c.engine.dispose()
    assert fake.problems == []


def status_events(c: Cluster, job_id: str) -> list[str]:
    return [e.data["status"] for e in jobs.events(c.engine, job_id, after_id=0, limit=1000).data
            if e.type == "status" and "status" in e.data]


# --------------------------------------------------------------------------- happy path


def test_job_is_built_as_specified_runs_reports_progress_and_completes(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id = cluster.submit(resources={"gpus": 2, "gpu_type": "A100", "cpus": 8, "memory_gb": 64,
                                       "max_duration_minutes": 90})
    cluster.runner.tick()
    [kjob] = fake.jobs()
    name = kjob["metadata"]["name"]
    assert name == job_name(job_id) and cluster.job(job_id).runner_ref == name
    assert kjob["metadata"]["labels"].items() >= {
        "trainyard.dev/job-id": job_id, "trainyard.dev/backend": "huggingface", "trainyard.dev/workspace": "ws-1"}.items()
    spec = kjob["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 90 * 60
    assert spec["ttlSecondsAfterFinished"] == cluster.settings.k8s_ttl_seconds_after_finished
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"trainyard.dev/gpu-type": "A100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    [ctr] = pod["containers"]
    spec_uri = cluster.store.default_uri("jobs", job_id, "spec.json")
    assert ctr["command"] == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "common.train",
                              spec_uri]
    assert ctr["resources"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                                "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    assert [e["secretRef"]["name"] for e in ctr["envFrom"]] == ["trainyard-storage", "trainyard-hf"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["TRAINYARD_PROGRESS_URL"]["value"] == (
        f"http://trainyard-huggingface.trainyard.svc:8081/internal/jobs/{job_id}/reports")
    # secrets reach the pod as a read-only file from the per-job Secret, never through its environment
    assert env["TRAINYARD_JOB_SECRETS_FILE"]["value"] == "/var/run/trainyard/job/secrets.json"
    assert not any("valueFrom" in e for e in ctr["env"])
    [mount] = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/var/run/trainyard/job"]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == f"{name}-env" and volume["secret"]["defaultMode"] == 0o400

    # secrets live in the per-job Secret, owned by the Job; never in the Job itself
    secret = fake.get("Secret", f"{name}-env")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == kjob["metadata"]["uid"]
    handed = json.loads(base64.b64decode(secret["data"]["secrets.json"]).decode())
    assert handed["secrets"]["huggingface_token"] == HF_SECRET
    token = handed["progress_token"]
    created = next(c for c in fake.calls if c.verb == "create" and c.resource == "jobs")
    assert HF_SECRET not in json.dumps(created.body) and token not in json.dumps(created.body)

    # the pod starts with both Secrets resolved and reports through the service like a local job
    pod_name = fake.start_pod(name)
    fake.run(pod_name, "trainyard: job started", "step 5/10 loss=1.9")
    pod_env = fake.secret_env(pod_name)
    assert "TRAINYARD_PROGRESS_TOKEN" not in pod_env and pod_env["HF_TOKEN"] == "hf_x"
    jobs.report(cluster.engine, job_id, token,
                ProgressReport(type="progress", progress={"step": 5, "total_steps": 10, "loss": 1.9, "percent": 50}))
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.running and job.progress.step == 5
    assert cluster.runner.logs(job_id) == ["trainyard: job started", "step 5/10 loss=1.9"]
    assert cluster.runner.logs(job_id, tail=1) == ["step 5/10 loss=1.9"]

    cluster.store.put_bytes(cluster.store.join(job.output_uri, "metrics.json"), b'{"train_loss": 1.2}')
    fake.exit(pod_name, 0, None, "training finished")
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.completed and job.metrics.train_loss == 1.2 and job.progress.percent == 100
    assert status_events(cluster, job_id) == ["pending", "running", "completed"]
    log_copy = cluster.store.get_bytes(cluster.store.join(job.log_uri, "train.log")).decode()
    assert log_copy.splitlines()[-1] == "training finished"
    # after the TTL the pod is gone and logs come from the copy
    fake.expire(name)
    assert fake.jobs() == [] and ("Secret", f"{name}-env") not in fake.objects
    assert cluster.runner.logs(job_id, tail=2) == ["step 5/10 loss=1.9", "training finished"]


def test_one_gpu_runs_one_process(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id = cluster.submit()
    cluster.runner.tick()
    [ctr] = fake.get("Job", job_name(job_id))["spec"]["template"]["spec"]["containers"]
    assert ctr["command"][:3] == ["python", "-m", "common.train"]
    assert ctr["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "1"}


# --------------------------------------------------------------------------- failures


def test_oom_killed_pod_fails_the_job_with_a_memory_message(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod, "loading model")
    fake.exit(pod, 137, "OOMKilled")
    assert fake.get("Job", job_name(job_id))["status"]["conditions"][-1]["reason"] == "BackoffLimitExceeded"
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == "out_of_memory"
    assert "memory limit of 16Gi" in job.error.message and "resources.memory_gb" in job.error.message


def test_program_error_exit_code_fails_fast_with_its_message(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod)
    fake.exit(pod, 65, None, "Traceback ...", "trainyard: error: datasets[0] line 3: not valid JSON")
    assert fake.get("Job", job_name(job_id))["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == "invalid_input"
    assert job.error.message.endswith("datasets[0] line 3: not valid JSON")


@pytest.mark.parametrize(
    ("reason", "message", "code", "expect"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "ghcr.io/trainyard/train:0.1.0"', "image_pull_failed",
         "the training image ghcr.io/trainyard/train:0.1.0 could not be pulled (ImagePullBackOff)"),
        ("ErrImagePull", "rpc error: not found", "image_pull_failed", "could not be pulled (ErrImagePull)"),
    ],
)
def test_image_pull_errors_fail_the_job_and_free_its_gpu(
    cluster: Cluster, fake: FakeApiServer, reason: str, message: str, code: str, expect: str
) -> None:
    job_id, pod = cluster.launch()
    fake.set_waiting(pod, reason, message)
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == code and expect in job.error.message
    assert fake.jobs() == [] and fake.pods_of(job_name(job_id)) == []


def test_missing_deployment_secret_is_a_clear_failure(cluster: Cluster, fake: FakeApiServer) -> None:
    fake.delete("Secret", "trainyard-hf", "Background")
    job_id, pod = cluster.launch()
    assert fake.get("Pod", pod)["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == (
        "CreateContainerConfigError")
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == "container_config_error"
    assert 'secret "trainyard-hf" not found' in job.error.message


def test_start_errors_wait_out_the_grace_period(cluster: Cluster, fake: FakeApiServer) -> None:
    cluster.runner.settings.k8s_start_grace_seconds = 3600
    job_id, pod = cluster.launch()
    fake.set_waiting(pod, "ErrImagePull", "registry timeout")
    cluster.runner.tick()
    assert cluster.job(job_id).status == JobStatus.running  # a registry hiccup is not fatal at once
    fake.run(pod)
    cluster.runner.tick()
    assert cluster.job(job_id).status == JobStatus.running
    assert cluster.runner._active[job_id].handle.stuck_since is None


def test_deadline_exceeded(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod, "step 1")
    fake.exceed_deadline(job_name(job_id))
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == "deadline_exceeded"
    assert "max_duration_minutes" in job.error.message


def test_pod_disruption_is_not_counted_as_a_failure(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    name = job_name(job_id)
    fake.unschedulable(pod, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    cluster.runner.tick()
    fake.run(pod, "step 1")
    fake.disrupt(pod)  # node drained
    assert "conditions" not in fake.get("Job", name)["status"]  # the Ignore rule: not failed, pod replaced
    [replacement] = [p["metadata"]["name"] for p in fake.pods_of(name) if p["status"]["phase"] == "Pending"]
    cluster.runner.tick()
    assert cluster.job(job_id).status == JobStatus.running
    messages = [e.message for e in jobs.events(cluster.engine, job_id, after_id=0, limit=100).data]
    assert any("waiting for a node: 0/3 nodes are available" in m for m in messages)
    assert any(f"pod {pod} was disrupted (EvictionByEvictionAPI" in m for m in messages)
    fake.run(replacement, "resumed")
    fake.exit(replacement, 0)
    cluster.runner.tick()
    assert cluster.job(job_id).status == JobStatus.completed
    assert cluster.runner.logs(job_id) == ["resumed"]  # the newest pod's log


def test_job_deleted_behind_our_back_fails_clearly(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, _ = cluster.launch()
    fake.delete("Job", job_name(job_id), "Background")
    cluster.runner.tick()
    job = cluster.job(job_id)
    assert job.status == JobStatus.failed and job.error.code == "runner_lost_job"


def test_api_refusal_fails_the_launch_and_leaves_nothing_behind(settings: Settings, tmp_path: Path) -> None:
    no_secrets = [r for r in role_rules(RBAC) if "secrets" not in r["resources"]]
    fake = FakeApiServer(no_secrets).start()
    try:
        settings.k8s_kubeconfig = str(fake.write_kubeconfig(tmp_path / "kubeconfig"))
        c = Cluster(settings, fake)
        job_id = c.submit()
        c.runner.tick()
        job = c.job(job_id)
        assert job.status == JobStatus.failed and job.error.code == "launch_failed"
        assert f"could not create Secret {job_name(job_id)}-env" in job.error.message
        assert "403 Forbidden" in job.error.message and HF_SECRET not in job.error.message
        assert fake.jobs() == []  # the Job created before the refusal was deleted again
        c.engine.dispose()
    finally:
        fake.stop()


# --------------------------------------------------------------------------- cancel


def test_cancel_deletes_the_job_with_foreground_propagation(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod, "step 1")
    name = job_name(job_id)
    assert cluster.job(job_id).status == JobStatus.running
    jobs.cancel(cluster.engine, cluster.runner, job_id, OutboundPolicy())
    [delete] = [c for c in fake.calls if c.verb == "delete"]
    assert delete.resource == "jobs" and delete.name == name and delete.body["propagationPolicy"] == "Foreground"
    assert fake.jobs() == [] and fake.pods_of(name) == [] and ("Secret", f"{name}-env") not in fake.objects
    cluster.runner.tick()
    assert cluster.job(job_id).status == JobStatus.cancelled
    assert status_events(cluster, job_id) == ["pending", "running", "cancelled"]


def test_cancel_on_another_replica_reaches_the_owner(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod)
    other = cluster.replica("svc-b")  # the cancel request landed on another replica, which owns nothing
    jobs.cancel(cluster.engine, other, job_id, OutboundPolicy())
    assert fake.jobs() != []
    cluster.runner.tick()  # the owner sees 'cancelled' and deletes its Job
    assert fake.jobs() == [] and cluster.job(job_id).status == JobStatus.cancelled


# --------------------------------------------------------------------------- restart


def test_restart_reconciles_jobs_from_labels(cluster: Cluster, fake: FakeApiServer) -> None:
    running, pod = cluster.launch()
    finished_unseen, pod2 = cluster.launch()
    lost, _ = cluster.launch()
    live, _ = cluster.launch()
    claimed = cluster.submit()
    # then svc-a dies, and while no replica watches:
    fake.run(pod, "step 1")
    cluster.store.put_bytes(cluster.store.join(cluster.job(finished_unseen).output_uri, "metrics.json"), b"{}")
    fake.run(pod2)
    fake.exit(pod2, 0)
    fake.expire(job_name(finished_unseen))  # finished and TTL-deleted
    fake.delete("Job", job_name(lost), "Background")  # removed by hand
    fake.add_pod("svc-live")
    with db.tx(cluster.engine) as conn:
        db.update_job(conn, claimed, claimed_by="svc-dead:7")  # claimed by a replica that died before launching
        db.update_job(conn, live, claimed_by="svc-live:1")  # owned by a replica that is alive

    # svc-a's pod is gone; its replacement starts and reconciles
    successor = cluster.replica("svc-c")
    successor.reconcile()
    assert set(successor._active) == {running}
    assert cluster.job(running).status == JobStatus.running
    with db.tx(cluster.engine) as conn:
        assert db.get_job_row(conn, running)["claimed_by"] == "svc-c:1"
        assert db.get_job_row(conn, claimed)["claimed_by"] is None
        assert db.get_job_row(conn, live)["claimed_by"] == "svc-live:1"
    assert cluster.job(finished_unseen).status == JobStatus.completed
    assert cluster.job(lost).status == JobStatus.failed and cluster.job(lost).error.code == "runner_lost_job"
    assert cluster.job(live).status == JobStatus.running
    lists = [c for c in fake.calls if c.verb == "list" and c.resource == "jobs"]
    assert "trainyard.dev/backend=huggingface" in lists[-1].query["labelSelector"][0]

    successor.tick()  # launches the requeued job, polls the adopted one
    assert cluster.job(claimed).status == JobStatus.running
    assert [c.body["metadata"]["name"] for c in fake.calls if c.verb == "create" and c.resource == "jobs"].count(job_name(claimed)) == 1
    fake.exit(pod, 0)
    successor.tick()
    assert cluster.job(running).status == JobStatus.completed


def test_pending_claim_with_a_job_is_cleaned_before_requeue(cluster: Cluster, fake: FakeApiServer) -> None:
    """A replica died after creating the Job but before recording 'running': its token is lost,
    so the Job is deleted and the job queued again once it is gone."""
    job_id, _ = cluster.launch()
    with db.tx(cluster.engine) as conn:
        db.update_job(conn, job_id, status=JobStatus.pending.value, claimed_by="svc-dead:3")
    successor = cluster.replica("svc-c")
    successor.reconcile()
    assert fake.jobs() == []
    successor.reconcile()
    with db.tx(cluster.engine) as conn:
        assert db.get_job_row(conn, job_id)["claimed_by"] is None
    successor.tick()
    assert cluster.job(job_id).status == JobStatus.running and len(fake.jobs()) == 1


def test_role_grants_exactly_what_the_runner_uses(cluster: Cluster, fake: FakeApiServer) -> None:
    job_id, pod = cluster.launch()
    fake.run(pod, "x")
    cluster.runner.tick()
    cluster.runner.logs(job_id)
    with db.tx(cluster.engine) as conn:
        db.update_job(conn, job_id, claimed_by="svc-gone:1")
    cluster.replica("svc-c").reconcile()
    jobs.cancel(cluster.engine, cluster.runner, job_id, OutboundPolicy())
    used = {(c.resource, c.verb) for c in fake.calls}
    granted = {(res, verb) for rule in role_rules(RBAC) for res in rule["resources"] for verb in rule["verbs"]}
    assert used == granted


def test_local_runner_processes_never_import_kubernetes() -> None:
    import subprocess
    import sys

    code = "import sys, services.huggingface.app; assert 'kubernetes' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""})
