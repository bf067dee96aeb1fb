"""KubernetesRunner: each job is a batch/v1 Job that runs the training program on a GPU node.

The dispatch loop, claims and status rules are the base class's; what a Job and its Secret
look like is ``common.runners.k8s_spec`` (pure functions of the job row); this module only
creates, reads, deletes and logs them::

    claim (DB) -> create Job -> create the job's Secret (owned by the Job)
               -> poll: Job conditions decide the end, pod states explain it
               -> finish: copy the pod log to log_uri, completed/failed
    cancel     -> delete the Job with foreground propagation (pods, Secret go with it)
    restart    -> list Jobs by label, adopt the ones whose replica is gone

The pod reports progress to ``settings.progress_base()``, the service's cluster URL, exactly
as a local job does. Multi-node training maps onto Kubeflow Trainer's TrainJob (JobSet
underneath); see docs/deploy.md.

This module imports the ``kubernetes`` client at the top, and is itself imported only
when ``TRAINYARD_RUNNER=kubernetes`` (``common.runners.make_runner``): an API process
on the local runner never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from common import db, exitcodes
from common.errors import RunnerError, StorageError
from common.runners.base import Active, Exit, JobRunner, run_deadline, tail_lines
from common.runners.k8s_spec import (
    CONTAINER,
    LABEL_JOB_ID,
    build_job,
    build_job_secret,
    label_selector,
    secret_name,
)
from common.runners.local import _alive
from common.schemas import EventLevel, EventType, JobStatus
from common.settings import Settings

log = logging.getLogger("trainyard.runner.kubernetes")

PULL_ERRORS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
RECONCILE_SECONDS = 60.0
KILL_WAIT_SECONDS = 5.0


@dataclass
class K8sHandle:
    job_id: str
    name: str  # the Job's name
    stuck_since: float | None = None  # when a pod was first seen unable to start
    noted: set[str] = field(default_factory=set)  # pod observations already recorded as events


# --------------------------------------------------------------------------- the API


def make_apis(settings: Settings) -> tuple[client.BatchV1Api, client.CoreV1Api]:
    """API clients from the in-cluster service account or a kubeconfig (settings.k8s_config).

    Raises: RunnerError when no configuration can be loaded.
    """
    cfg = client.Configuration()
    mode = settings.k8s_config
    loaded = False
    if mode in ("auto", "in-cluster"):
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            loaded = True
        except ConfigException as e:
            if mode == "in-cluster":
                raise RunnerError("TRAINYARD_K8S_CONFIG=in-cluster but no service account is mounted") from e
    if not loaded:
        try:
            k8s_config.load_kube_config(
                config_file=settings.k8s_kubeconfig or None,
                context=settings.k8s_context or None,
                client_configuration=cfg,
            )
        except (ConfigException, OSError) as e:
            raise RunnerError(
                f"no Kubernetes configuration: not in a cluster and no usable kubeconfig "
                f"({settings.k8s_kubeconfig or '$KUBECONFIG or ~/.kube/config'})"
            ) from e
    api = client.ApiClient(cfg)
    return client.BatchV1Api(api), client.CoreV1Api(api)


# --------------------------------------------------------------------------- the runner


class KubernetesRunner(JobRunner):
    name = "kubernetes"

    def __init__(self, deps: Any) -> None:
        super().__init__(deps)
        self.ns = self.settings.k8s_namespace
        self.host = socket.gethostname()  # in a cluster: this replica's pod name
        self.timeout = self.settings.k8s_request_timeout_seconds
        self.tick_seconds = self.settings.k8s_poll_seconds  # type: ignore[misc]
        self.batch, self.core = make_apis(self.settings)
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS

    @property
    def slots(self) -> int:
        return self.settings.k8s_max_active_jobs

    def _selector(self, job_id: str | None = None) -> str:
        return label_selector(self.deps.backend, job_id)

    # ----------------------------------------------------------------- launch

    def launch(self, row: Any, env: dict[str, str], secrets: str) -> tuple[K8sHandle, str]:
        """Create the Job, then its Secret owned by it. Until the Secret exists the pod waits
        for its volume, which the kubelet retries; no pod runs without it.

        Raises: RunnerError (API refused; a Job of that name exists already)."""
        job = build_job(self.settings, row, env, replica=self.replica)
        name = job.metadata.name
        try:
            created = self.batch.create_namespaced_job(self.ns, job, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 409:
                raise RunnerError(f"a Kubernetes Job named {name} already exists in namespace {self.ns}") from e
            raise _wrap(e, f"could not create Kubernetes Job {name} for job '{row['id']}'") from e
        try:
            self.core.create_namespaced_secret(
                self.ns, build_job_secret(self.settings, job, secrets, created.metadata.uid), _request_timeout=self.timeout
            )
        except ApiException as e:
            self._delete_job(name)
            raise _wrap(e, f"could not create Secret {secret_name(name)} for job '{row['id']}'") from e
        return K8sHandle(row["id"], name), name

    # ----------------------------------------------------------------- status

    def poll(self, handle: K8sHandle) -> Exit | None:
        """The Job's conditions decide that it ended; its pods explain why."""
        try:
            job = self.batch.read_namespaced_job(handle.name, self.ns, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 404:
                return Exit(1, reason=f"Kubernetes Job {handle.name} disappeared (deleted outside Trainyard?)",
                            code="runner_lost_job")
            log.warning("reading Job %s failed (%s %s); retrying next tick", handle.name, e.status, e.reason)
            return None
        conditions = {c.type: c for c in (job.status.conditions if job.status else None) or [] if c.status == "True"}
        if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
            return Exit(0)
        pods = self._pods(handle.job_id)
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if failed is not None:
            return self._failure(handle, failed, pods)
        return self._while_active(handle, pods)

    def _failure(self, handle: K8sHandle, cond: Any, pods: list[Any]) -> Exit:
        if cond.reason == "DeadlineExceeded":
            return Exit(-9, reason="deadline exceeded: the Job ran past resources.max_duration_minutes",
                        code="deadline_exceeded")
        for pod in sorted(pods, key=_newest, reverse=True):
            term = _terminated(pod)
            if term is None or term.exit_code == 0:
                continue
            if term.reason == "OOMKilled":
                limit = _container(pod).resources.limits.get("memory", "?") if _container(pod) else "?"
                return Exit(exitcodes.KILLED, code="out_of_memory", reason=(
                    f"out of memory: the training container exceeded its memory limit of {limit} "
                    "(raise resources.memory_gb, or lower batch_size or max_sequence_length)"))
            return Exit(term.exit_code)
        return Exit(1, reason=f"Kubernetes Job failed ({cond.reason}): {cond.message or 'no message'}",
                    code="job_failed")

    def _while_active(self, handle: K8sHandle, pods: list[Any]) -> Exit | None:
        """Fail pods that cannot start (after a grace); record scheduling waits and disruptions once."""
        stuck: tuple[str, str, str] | None = None
        for pod in pods:
            pname = pod.metadata.name
            for c in (pod.status.conditions if pod.status else None) or []:
                if c.type == "DisruptionTarget" and c.status == "True" and f"disrupted:{pname}" not in handle.noted:
                    handle.noted.add(f"disrupted:{pname}")
                    self._event(handle.job_id, f"pod {pname} was disrupted ({c.reason}: {c.message or ''}); "
                                "Kubernetes replaces it and it does not count as a failure")
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable" \
                        and f"unschedulable:{pname}" not in handle.noted:
                    handle.noted.add(f"unschedulable:{pname}")
                    self._event(handle.job_id, f"waiting for a node: {c.message or 'no node fits the pod'}")
            for cs in (pod.status.container_statuses if pod.status else None) or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in PULL_ERRORS | CONFIG_ERRORS:
                    stuck = (waiting.reason, waiting.message or "", cs.image)
        if stuck is None:
            handle.stuck_since = None
            return None
        now = time.monotonic()
        handle.stuck_since = handle.stuck_since or now
        if now - handle.stuck_since < self.settings.k8s_start_grace_seconds:
            return None
        reason, message, image = stuck
        self._delete_job(handle.name)  # it would hold its GPU while retrying forever
        if reason in PULL_ERRORS:
            return Exit(1, code="image_pull_failed",
                        reason=f"the training image {image} could not be pulled ({reason}): {message}".rstrip(": "))
        return Exit(1, code="container_config_error",
                    reason=f"the training container could not be created ({reason}): {message}".rstrip(": "))

    def _pods(self, job_id: str) -> list[Any]:
        try:
            return list(self.core.list_namespaced_pod(
                self.ns, label_selector=self._selector(job_id), _request_timeout=self.timeout).items or [])
        except ApiException as e:
            log.warning("listing pods of job %s failed (%s %s)", job_id, e.status, e.reason)
            return []

    def _event(self, job_id: str, message: str) -> None:
        with db.tx(self.engine) as conn:
            db.add_event(conn, job_id, EventType.log, message, level=EventLevel.warning)

    # ----------------------------------------------------------------- cancel

    def kill(self, handle: K8sHandle, *, grace: float) -> None:
        """Delete the Job with foreground propagation: the garbage collector removes its pods (each
        gets terminationGracePeriodSeconds = cancel_grace_seconds) and its Secret, and the Job object
        itself only goes once they are gone. Waits a few seconds for the pods, no longer: a cancel
        request must answer within the gateway's service timeout."""
        self._delete_job(handle.name)
        deadline = time.monotonic() + min(grace, KILL_WAIT_SECONDS)
        while self._pods(handle.job_id):
            if time.monotonic() >= deadline:
                log.info("pods of Job %s still terminating; the garbage collector removes them", handle.name)
                return
            time.sleep(0.5)

    def _delete_job(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name, self.ns, body=client.V1DeleteOptions(propagation_policy="Foreground"),
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            if e.status != 404:
                log.error("deleting Job %s failed (%s %s)", name, e.status, e.reason)

    # ----------------------------------------------------------------- logs

    def _pod_log(self, job_id: str, tail: int = 0) -> list[str] | None:
        """Log lines of the job's newest pod; None when it has no pod (not started, or TTL-deleted)."""
        pods = self._pods(job_id)
        if not pods:
            return None
        pod = max(pods, key=_newest)
        try:
            text = self.core.read_namespaced_pod_log(
                pod.metadata.name, self.ns, container=CONTAINER, tail_lines=tail or None, _request_timeout=self.timeout
            )
        except ApiException as e:  # 400 while the container is still being created
            log.info("no log yet for pod %s (%s %s)", pod.metadata.name, e.status, e.reason)
            return []
        return (text or "").splitlines()

    def logs(self, job_id: str, tail: int = 0) -> list[str]:
        lines = self._pod_log(job_id, tail)
        if lines is not None:
            return lines
        with db.tx(self.engine) as conn:
            log_uri = db.get_job_row(conn, job_id)["log_uri"]
        if log_uri:
            try:
                text = self.store.get_bytes(self.store.join(log_uri, "train.log")).decode("utf-8", "replace")
                return tail_lines(text.splitlines(), tail)
            except StorageError:
                pass
        return []

    def _upload_log(self, job_id: str) -> None:
        try:
            lines = self._pod_log(job_id)
            with db.tx(self.engine) as conn:
                log_uri = db.get_job_row(conn, job_id)["log_uri"]
            if lines is not None and log_uri:
                self.store.put_bytes(self.store.join(log_uri, "train.log"), ("\n".join(lines) + "\n").encode())
        except Exception:  # the pod log stays readable until the Job's TTL; a failed copy is only logged
            log.warning("could not copy the log of %s to its log_uri", job_id, exc_info=True)

    # ----------------------------------------------------------------- restart

    def tick(self) -> None:
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
            try:
                self.reconcile()
            except Exception:
                log.exception("periodic reconcile failed")
        super().tick()

    def reconcile(self) -> None:
        """Adopt the jobs whose replica is gone, found by label; runs at start and every minute
        (an API error is logged and the next pass tries again).

        running + Job exists      -> adopt (poll it from here on)
        running + Job gone        -> completed if metrics.json was written, else failed
        pending + claimed, no Job -> back in the queue
        pending + claimed + Job   -> the Job is deleted (its token was lost); queued once it is gone
        """
        with self._lock:
            rows = [r for r in self.unfinished_jobs() if r["id"] not in self._active
                    and (r["status"] == JobStatus.running.value or r["claimed_by"])]
            if not rows:
                return
            try:
                listed = self.batch.list_namespaced_job(
                    self.ns, label_selector=self._selector(), _request_timeout=self.timeout).items or []
            except ApiException as e:  # the next pass (every RECONCILE_SECONDS) tries again
                log.error("reconcile: could not list the %s Jobs in namespace %s (%s %s)",
                          self.deps.backend, self.ns, e.status, e.reason)
                return
            k8s_jobs = {j.metadata.labels.get(LABEL_JOB_ID): j for j in listed if j.metadata.labels}
            for row in rows:
                owner = row["claimed_by"] or ""
                if owner != self.replica and self._owner_alive(owner):
                    continue
                kjob = k8s_jobs.get(row["id"])
                if row["status"] == JobStatus.pending.value:
                    self._requeue(row, kjob)
                elif kjob is not None:
                    self._adopt(row, kjob.metadata.name)
                else:
                    self._job_gone(row)

    def _requeue(self, row: Any, kjob: Any) -> None:
        if kjob is not None:
            self._delete_job(kjob.metadata.name)
            return
        with db.tx(self.engine) as conn:
            db.update_job(conn, row["id"], claimed_by=None)
            db.add_event(conn, row["id"], EventType.status, f"requeued by {self.replica}: its claimer "
                         f"{row['claimed_by']} is gone and launched no Job")

    def _adopt(self, row: Any, name: str) -> None:
        with db.tx(self.engine) as conn:
            db.update_job(conn, row["id"], claimed_by=self.replica)
            db.add_event(conn, row["id"], EventType.status, f"adopted by {self.replica} (Job {name})")
        self._active[row["id"]] = Active(row["id"], K8sHandle(row["id"], name), run_deadline(row))

    def _job_gone(self, row: Any) -> None:
        """The Job ended and was removed (TTL) while no replica watched it."""
        try:
            done = bool(row["output_uri"]) and self.store.exists(self.store.join(row["output_uri"], "metrics.json"))
        except StorageError:
            done = False
        if done:
            self.finish(row["id"], Exit(0))
            return
        message = f"runner lost the Kubernetes Job {row['runner_ref']} (removed before its outcome was read)"
        with db.tx(self.engine) as conn:
            db.set_status(conn, row["id"], JobStatus.failed, message=message, level=EventLevel.error,
                          error={"code": "runner_lost_job", "message": message})
        self._notify(row["id"])

    def _owner_alive(self, owner: str) -> bool:
        """A claimer is its replica's ``<pod name>:<pid>``; it is gone when its pod is."""
        if not owner:
            return False
        host, _, pid = owner.rpartition(":")
        if host == self.host:
            return pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))
        try:
            pod = self.core.read_namespaced_pod(host, self.ns, _request_timeout=self.timeout)
        except ApiException as e:
            return e.status != 404  # cannot tell: leave the job to its owner
        phase = pod.status.phase if pod.status else None
        return pod.metadata.deletion_timestamp is None and phase in ("Pending", "Running")


def _wrap(e: ApiException, what: str) -> RunnerError:
    return RunnerError(f"{what}: Kubernetes API answered {e.status} {e.reason}")


def _newest(pod: Any) -> tuple[float, bool]:
    """Sort key: creation time (1 s resolution), then a replacement before the pod it replaced."""
    ts = pod.metadata.creation_timestamp
    return (ts.timestamp() if ts else 0.0, bool(pod.status and pod.status.phase != "Failed"))


def _container(pod: Any) -> Any:
    return next((c for c in pod.spec.containers if c.name == CONTAINER), None) if pod.spec else None


def _terminated(pod: Any) -> Any:
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == CONTAINER and cs.state and cs.state.terminated:
            return cs.state.terminated
    return None
