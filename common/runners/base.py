"""JobRunner: the dispatch loop both runners share.

The database is the queue. Each tick a runner (1) polls the jobs it launched and
finishes those that ended, killing any cancelled or past their deadline, and
(2) claims pending jobs of its backend while it has free slots. A claim is a
conditional UPDATE, so with several replicas each job launches exactly once.
Subclasses only say how to launch, poll, kill and read logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import Engine, select
from sqlalchemy.engine import RowMapping

from common import db, secretbox
from common.errors import StorageError
from common.exitcodes import describe
from common.runners.resources import max_duration_seconds
from common.schemas import EventLevel, JobStatus
from common.settings import Settings
from common.storage import ObjectStore

log = logging.getLogger("trainyard.runner")


def run_deadline(row: Any) -> float:
    """The ``time.monotonic()`` at which a job passes resources.max_duration_minutes, counted
    from its ``started_at`` (from now when it has not started yet)."""
    started = db.aware(row["started_at"])
    elapsed = (db.utcnow() - started).total_seconds() if started else 0.0
    return time.monotonic() + max_duration_seconds(row["request"]) - elapsed


@dataclass
class RunnerDeps:
    engine: Engine
    settings: Settings
    store: ObjectStore
    backend: str
    on_status: Any = None  # callable(job_id) after a status change, e.g. webhooks
    progress_base: str = ""  # where jobs report (the service's report listener); default settings.progress_base()
    box: secretbox.SecretBox | None = None  # opens the jobs' secret column; default from settings


@dataclass
class Exit:
    returncode: int
    reason: str | None = None  # runner-side cause (OOMKilled, DeadlineExceeded, ...)
    code: str | None = None  # error code overriding the exit-code mapping


@dataclass
class Active:
    job_id: str
    handle: Any
    deadline: float
    last_log_upload: float = field(default_factory=time.monotonic)


class JobRunner(ABC):
    name: ClassVar[str]
    tick_seconds: ClassVar[float] = 0.5

    def __init__(self, deps: RunnerDeps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.store = deps.store
        self.engine = deps.engine
        self.box = deps.box or secretbox.from_settings(deps.settings)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._active: dict[str, Active] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive a bad tick (DB blip, storage hiccup)
                log.exception("runner tick failed")
            self._wake.wait(self.tick_seconds)
            self._wake.clear()

    @property
    def slots(self) -> int:
        return self.settings.local_slots

    # ----------------------------------------------------------------- the tick

    def tick(self) -> None:
        with self._lock:
            self._poll_active()
            while len(self._active) < self.slots and not self._stop.is_set():
                with db.tx(self.engine) as conn:
                    job_id = db.claim_next_pending(conn, self.deps.backend, self.replica)
                if job_id is None:
                    break
                self._launch_claimed(job_id)

    def _poll_active(self) -> None:
        if not self._active:
            return
        with db.tx(self.engine) as conn:
            statuses = dict(
                conn.execute(select(db.jobs.c.id, db.jobs.c.status).where(db.jobs.c.id.in_(self._active))).all()
            )
        now = time.monotonic()
        for job_id, act in list(self._active.items()):
            status = statuses.get(job_id)
            if status in (JobStatus.cancelled.value, None):  # cancelled here or by another replica
                self.kill(act.handle, grace=self.settings.cancel_grace_seconds)
                self._active.pop(job_id)
                self._upload_log(job_id)
                continue
            ended = self.poll(act.handle)
            if ended is None and now > act.deadline:
                self.kill(act.handle, grace=self.settings.cancel_grace_seconds)
                ended = Exit(-9, reason="deadline exceeded (resources.max_duration_minutes)", code="deadline_exceeded")
            if ended is not None:
                self._active.pop(job_id)
                self.finish(job_id, ended)
            elif now - act.last_log_upload > 15:
                act.last_log_upload = now
                self._upload_log(job_id)

    def _launch_claimed(self, job_id: str) -> None:
        token = secrets.token_urlsafe(32)
        with db.tx(self.engine) as conn:
            row = db.get_job_row(conn, job_id)
        env = self.job_env(row)
        try:
            handle, ref = self.launch(row, env, self.job_secrets(row, token))
        except Exception as e:
            log.exception("launch of %s failed", job_id)
            with db.tx(self.engine) as conn:
                db.set_status(
                    conn, job_id, JobStatus.failed, message=f"launch failed: {e}", level=EventLevel.error,
                    error={"code": "launch_failed", "message": str(e)},
                )
            self._notify(job_id)
            return
        with db.tx(self.engine) as conn:
            moved = db.set_status(
                conn, job_id, JobStatus.running, message=f"launched by {self.name} runner ({ref})",
                runner=self.name, runner_ref=ref,
                progress_token_hash=hashlib.sha256(token.encode()).hexdigest(),
            )
        if not moved:  # cancelled between claim and launch
            self.kill(handle, grace=1)
            return
        self._active[job_id] = Active(job_id, handle, run_deadline(row))
        self._notify(job_id)

    def job_env(self, row: Any) -> dict[str, str]:
        """The job's plain environment: no secret (those go through ``job_secrets``)."""
        s = self.settings
        env = {
            "TRAINYARD_JOB_ID": row["id"],
            "TRAINYARD_PROGRESS_URL": f"{self.progress_base()}/internal/jobs/{row['id']}/reports",
            "TRAINYARD_STORAGE_ROOT": str(s.storage_root),
            "TRAINYARD_STORAGE_URL": s.storage_url,
            "TRAINYARD_S3_REGION": s.s3_region,
        }
        if s.s3_endpoint_url:
            env["TRAINYARD_S3_ENDPOINT_URL"] = s.s3_endpoint_url
        return env

    def job_secrets(self, row: Any, token: str) -> str:
        """The JSON a job reads once from its secrets file (``common.train.secrets_file``): the
        request's secrets and its report token. Never put in an environment."""
        return json.dumps({"secrets": self.box.open(row["secrets"]), "progress_token": token})

    def progress_base(self) -> str:
        return self.deps.progress_base or self.settings.progress_base()

    # ----------------------------------------------------------------- outcomes

    def finish(self, job_id: str, ended: Exit) -> None:
        """Map an ended job to completed/failed; a cancelled job stays cancelled."""
        self._upload_log(job_id)
        with db.tx(self.engine) as conn:
            row = db.get_job_row(conn, job_id)
        if ended.returncode == 0:
            metrics = self._read_metrics(row["output_uri"])
            progress = dict(row["progress"] or {})
            progress["percent"] = 100.0
            with db.tx(self.engine) as conn:
                db.set_status(
                    conn, job_id, JobStatus.completed, message="training completed",
                    metrics={**(row["metrics"] or {}), **metrics}, progress=progress,
                )
        else:
            code, message = describe(ended.returncode)
            code = ended.code or code
            if ended.reason:
                message = ended.reason
            last = self.error_lines(job_id)
            if last:
                message = f"{message}: {last}"
            with db.tx(self.engine) as conn:
                db.set_status(
                    conn, job_id, JobStatus.failed, message=message, level=EventLevel.error,
                    data={"returncode": ended.returncode}, error={"code": code, "message": message},
                )
        self._notify(job_id)

    def error_lines(self, job_id: str) -> str:
        """The program's own 'trainyard: error:' line if any, else the last log lines."""
        lines = self.logs(job_id, tail=40)
        for line in reversed(lines):
            if line.startswith("trainyard: error: "):
                return line.removeprefix("trainyard: error: ").strip()
        return " | ".join(line.strip() for line in lines[-5:] if line.strip())[-2000:]

    def _read_metrics(self, output_uri: str | None) -> dict[str, Any]:
        if not output_uri:
            return {}
        try:
            return json.loads(self.store.get_bytes(self.store.join(output_uri, "metrics.json")))
        except (StorageError, ValueError):
            log.warning("no readable metrics.json under %s", output_uri)
            return {}

    def _notify(self, job_id: str) -> None:
        if self.deps.on_status:
            self.deps.on_status(job_id)

    # ----------------------------------------------------------------- cancel

    def cancel(self, job_id: str) -> None:
        """Kill the job's process now if this replica owns it; the loop covers the rest."""
        with self._lock:
            act = self._active.pop(job_id, None)
        if act is not None:
            self.kill(act.handle, grace=self.settings.cancel_grace_seconds)
            self._upload_log(job_id)
        self.wake()

    # ----------------------------------------------------------------- subclass API

    @abstractmethod
    def reconcile(self) -> None:
        """On start: adopt or fail the jobs a previous process left running."""

    def unfinished_jobs(self) -> Sequence[RowMapping]:
        """What ``reconcile`` looks at: this backend's pending and running jobs of this runner kind,
        whichever replica claimed them."""
        with db.tx(self.engine) as conn:
            return conn.execute(
                select(db.jobs).where(
                    db.jobs.c.backend == self.deps.backend,
                    db.jobs.c.runner == self.name,
                    db.jobs.c.status.in_([JobStatus.running.value, JobStatus.pending.value]),
                )
            ).mappings().all()

    @abstractmethod
    def launch(self, row: Any, env: dict[str, str], secrets: str) -> tuple[Any, str]:
        """Start the training program with ``env`` and hand it ``secrets`` (``job_secrets``) through
        a file only its user may read (``common.jobsecrets``); returns (handle, runner_ref)."""

    @abstractmethod
    def poll(self, handle: Any) -> Exit | None:
        """None while running."""

    @abstractmethod
    def kill(self, handle: Any, *, grace: float) -> None:
        """Stop the job and everything it started; returns once nothing is left."""

    @abstractmethod
    def logs(self, job_id: str, tail: int = 0) -> list[str]:
        """The job's log lines; tail=0 means all."""

    def _upload_log(self, job_id: str) -> None:  # noqa: B027  (optional hook)
        """Copy the log to the job's log_uri (best effort: the log also stays readable here)."""


def tail_lines(lines: Any, tail: int) -> list[str]:
    return list(deque(lines, maxlen=tail)) if tail > 0 else list(lines)
