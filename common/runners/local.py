"""LocalRunner: the training program as a subprocess in its own process group.

The program's stdout/stderr go straight to a log file (not a pipe), and a tiny
``sh`` wrapper records the exit code in a file, so a job keeps logging and its
outcome is still known if the service restarts while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import db, jobsecrets
from common.errors import StorageError
from common.runners.base import Active, Exit, JobRunner, run_deadline, tail_lines
from common.schemas import EventLevel, JobStatus
from common.settings import SECRET_ENV

log = logging.getLogger("trainyard.runner.local")

WRAPPER = '"$@"; rc=$?; echo $rc > "$TRAINYARD_EXIT_FILE"; exit $rc'
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalHandle:
    job_id: str
    pid: int
    proc: subprocess.Popen[bytes] | None  # None when adopted after a restart
    exit_file: Path


class LocalRunner(JobRunner):
    name = "local"

    def __init__(self, deps: Any) -> None:
        super().__init__(deps)
        self.host = socket.gethostname()
        self.log_dir = self.settings.log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.log"

    def exit_path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.exit"

    def secrets_path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.secrets.json"

    # ----------------------------------------------------------------- launch

    def launch(self, row: Any, env: dict[str, str], secrets: str) -> tuple[LocalHandle, str]:
        job_id = row["id"]
        exit_file = self.exit_path(job_id)
        exit_file.unlink(missing_ok=True)
        secrets_file = self.secrets_path(job_id)
        jobsecrets.write(secrets_file, secrets)  # the job reads and removes it at start
        python = self.settings.python_executable or sys.executable
        inherited = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}  # the service's own credentials stay here
        full_env = {
            **inherited, **env, jobsecrets.FILE_ENV: str(secrets_file), "TRAINYARD_EXIT_FILE": str(exit_file),
            "PYTHONUNBUFFERED": "1",
        }
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        with open(self.log_path(job_id), "ab") as logf, _removed_on_error(secrets_file):
            proc = subprocess.Popen(
                ["sh", "-c", WRAPPER, "sh", python, "-m", "common.train", row["spec_uri"]],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=REPO_ROOT,
                start_new_session=True,  # own process group: cancel reaches every child
            )
        return LocalHandle(job_id, proc.pid, proc, exit_file), f"{self.host}:{proc.pid}"

    def poll(self, handle: LocalHandle) -> Exit | None:
        if handle.proc is not None:
            rc = handle.proc.poll()
            ended = None if rc is None else Exit(rc)
        elif _alive(handle.pid):
            ended = None
        else:
            ended = self._exit_from_file(handle.exit_file)
        if ended is not None:  # a job that died before reading its secrets leaves no file behind
            self.secrets_path(handle.job_id).unlink(missing_ok=True)
        return ended

    def _exit_from_file(self, exit_file: Path) -> Exit:
        try:
            return Exit(int(exit_file.read_text().strip()))
        except (OSError, ValueError):
            return Exit(1, reason="runner lost the process", code="runner_lost_process")

    def kill(self, handle: LocalHandle, *, grace: float) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `grace` seconds."""
        self.secrets_path(handle.job_id).unlink(missing_ok=True)
        pgid = handle.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if handle.proc is not None:
                handle.proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
        if handle.proc is not None:
            try:
                handle.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("process group %s of job %s did not die", pgid, handle.job_id)
        while _group_alive(pgid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)

    # ----------------------------------------------------------------- restart

    def reconcile(self) -> None:
        """Adopt our host's still-running jobs whose owner died; fail the ones whose process is gone."""
        for row in self.unfinished_jobs():
            owner = row["claimed_by"] or ""
            if owner and owner != self.replica and _owner_alive(owner, self.host):
                continue  # another live replica on this host runs it
            if row["status"] == JobStatus.pending.value:
                if owner:  # claimed but never launched: put it back in the queue
                    with db.tx(self.engine) as conn:
                        db.update_job(conn, row["id"], claimed_by=None)
                continue
            host, _, pid_s = (row["runner_ref"] or "").rpartition(":")
            if host != self.host and (not owner or not owner.startswith(f"{self.host}:")):
                continue  # launched on another host: that host's service reconciles it
            pid = int(pid_s) if pid_s.isdigit() else -1
            handle = LocalHandle(row["id"], pid, None, self.exit_path(row["id"]))
            if pid > 0 and _alive(pid) and row["id"] in _cmdline(pid):
                with db.tx(self.engine) as conn:
                    db.update_job(conn, row["id"], claimed_by=self.replica)
                    db.add_event(conn, row["id"], db.EventType.status, f"adopted by {self.replica} after restart")
                self._active[row["id"]] = Active(row["id"], handle, run_deadline(row))
                continue
            ended = self._exit_from_file(handle.exit_file)
            if ended.code == "runner_lost_process":
                with db.tx(self.engine) as conn:
                    db.set_status(
                        conn, row["id"], JobStatus.failed, message="runner lost the process",
                        level=EventLevel.error, error={"code": "runner_lost_process", "message": "runner lost the process"},
                    )
                self._notify(row["id"])
            else:
                self.finish(row["id"], ended)

    # ----------------------------------------------------------------- logs

    def logs(self, job_id: str, tail: int = 0) -> list[str]:
        path = self.log_path(job_id)
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n") for line in tail_lines(f, tail)]
        with db.tx(self.engine) as conn:
            row = db.get_job_row(conn, job_id)
        if row["log_uri"]:
            try:
                text = self.store.get_bytes(self.store.join(row["log_uri"], "train.log")).decode("utf-8", "replace")
                return tail_lines(text.splitlines(), tail)
            except StorageError:
                pass
        return []

    def _upload_log(self, job_id: str) -> None:
        path = self.log_path(job_id)
        try:
            with db.tx(self.engine) as conn:
                log_uri = db.get_job_row(conn, job_id)["log_uri"]
            if log_uri and path.exists():
                self.store.put_file(self.store.join(log_uri, "train.log"), path)
        except Exception:  # the local file stays authoritative; a failed copy is only logged
            log.warning("could not copy the log of %s to its log_uri", job_id, exc_info=True)


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Any:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # only zombies left?
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(parts[2]) == pgid and parts[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _owner_alive(owner: str, host: str) -> bool:
    """A claimer on this host is alive if its pid is; one on another host is assumed alive."""
    o_host, _, o_pid = owner.rpartition(":")
    if o_host != host:
        return True
    return o_pid.isdigit() and _alive(int(o_pid))
