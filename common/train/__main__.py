"""``python -m common.train SPEC_URI``: the training program every job runs.

A recipe that reads top to bottom (after trl/scripts/dpo.py): read the spec,
merge the secrets, pick the backend, download the data, train, write
metrics.json, upload the output. Failures end with ONE ``trainyard: error:``
line on stderr and an exit code from ``common.exitcodes`` that the runners turn
into the job's error; secrets never reach stdout or stderr.

Spec (JSON at SPEC_URI)::

    {"job_id", "backend", "backend_class": "module:Class", "request": <TrainingRequest without secrets>,
     "output_uri", "log_uri"}

``backend_class`` is the class the program loads (no registry needed); a spec without it names the
backend by its trainer name (``backend``).

Environment: TRAINYARD_JOB_SECRETS_FILE (the request's secrets and the report token,
read and removed at start: ``common.jobsecrets``), TRAINYARD_PROGRESS_URL (see
reporting.py), TRAINYARD_WORK_DIR (optional scratch dir), plus the usual TRAINYARD_*
settings for storage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pydantic import ValidationError

from common import exitcodes, jobsecrets, noise
from common.errors import (
    AccessDenied,
    BackendUnavailable,
    BadRequest,
    ObjectNotFound,
    TrainyardError,
    Unprocessable,
)
from common.schemas import EventLevel, TrainingRequest
from common.storage import ObjectStore
from common.train.data import DatasetError
from common.train.models import ModelLoadError
from common.train.reporting import ProgressReporter, is_main_process
from common.trainer import TrainContext, load_backend

ERROR_PREFIX = "trainyard: error: "


class SpecError(ValueError):
    """The job spec or its request is unusable (exit INVALID_INPUT)."""


class Cancelled(BaseException):
    """SIGTERM outside the training loop. A BaseException, so library ``except Exception`` can't swallow it."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.train", description="Run one Trainyard training job.")
    parser.add_argument("spec_uri", help="file:// or s3:// URI of the job spec JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # tqdm bars are \r-garbage in a job log (the progress lines from reporting.py replace them), and a
    # few library notes read like failures but ask nothing of the user: both stay out of the log.
    noise.silence()
    limit_threads_to_cpu_quota()

    # The secrets file is read and removed before anything else runs: no environment, child process
    # or later reader of the disk sees the secrets.
    try:
        secrets, token = jobsecrets.take()
        unreadable: jobsecrets.JobSecretsError | None = None
    except jobsecrets.JobSecretsError as e:
        secrets, token, unreadable = {}, "", e
    redact = Redactor([token])
    redact.add_values(secrets)
    reporter = ProgressReporter.from_env(token)
    _install_sigterm(reporter)
    try:
        if unreadable is not None:
            raise SpecError(str(unreadable))
        run(args.spec_uri, secrets, reporter)
        return exitcodes.OK
    except BaseException as e:  # noqa: BLE001 - this is the program's one exit point
        code, message, show_traceback = classify(e)
        if show_traceback:
            print(redact("".join(traceback.format_exception(e))), file=sys.stderr, end="")
        line = redact(message)
        reporter.log(line, level=EventLevel.error)
        print(ERROR_PREFIX + line, file=sys.stderr, flush=True)
        return code
    finally:
        reporter.close()


def run(spec_uri: str, secrets: dict[str, Any], reporter: ProgressReporter) -> dict[str, Any]:
    """The recipe. Returns the metrics written to metrics.json."""
    store = ObjectStore()
    spec = read_spec(store, spec_uri)
    request = build_request(spec["request"], secrets)
    job_id = spec["job_id"]
    output_uri = spec.get("output_uri") or request.artifacts.output_uri
    if not output_uri:
        raise SpecError("the job spec has no output_uri and the request no artifacts.output_uri")

    backend = load_backend(spec.get("backend_class") or spec["backend"])
    # "local" is literally true in here: this process is where training runs, so the packages must be
    # importable here. Runner-specific limits (e.g. GPUs on Kubernetes) were checked before launch.
    backend.validate(request, runner="local")
    method = request.customization.method.value
    reporter.started(f"job {job_id} started ({backend.name}, {method})", backend=backend.name, method=method)

    with work_dir() as work:
        train_files, validation_files = download_datasets(store, request, work / "data")
        output_dir = work / "output"
        shutil.rmtree(output_dir, ignore_errors=True)  # a restarted pod's TRAINYARD_WORK_DIR may hold a stale one
        output_dir.mkdir(parents=True)
        ctx = TrainContext(
            job_id=job_id,
            request=request,
            train_files=train_files,
            validation_files=validation_files,
            output_dir=output_dir,
            work_dir=work,
            reporter=reporter,
        )
        metrics = backend.train(ctx)
        if reporter.cancel_requested.is_set():
            raise Cancelled()

        if is_main_process():
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            store.upload_dir(output_dir, output_uri)
            reporter.metrics(metrics, message=f"training finished; output at {output_uri}")
    return metrics


# --------------------------------------------------------------------------- steps


def read_spec(store: ObjectStore, spec_uri: str) -> dict[str, Any]:
    """Raises: SpecError (not JSON, missing keys); StorageError (cannot read)."""
    try:
        spec = json.loads(store.get_bytes(spec_uri))
    except ValueError as e:
        raise SpecError(f"job spec {spec_uri} is not valid JSON") from e
    missing = [k for k in ("job_id", "backend", "request") if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise SpecError(f"job spec {spec_uri} lacks {', '.join(missing)}")
    return spec


def build_request(public: dict[str, Any], secrets: dict[str, Any]) -> TrainingRequest:
    """The stored (secret-free) request plus the secrets from the environment, validated.

    Raises:
        SpecError: the merged request is invalid; the message lists fields, never values.
    """
    data = copy.deepcopy(public)
    base = data.setdefault("base_model", {})
    for key in ("auth_token", "huggingface_token"):
        if secrets.get(key):
            base[key] = secrets[key]
    for idx, auth in (secrets.get("dataset_auth") or {}).items():
        try:
            data["datasets"][int(idx)]["auth"] = auth
        except (KeyError, IndexError, TypeError, ValueError):
            raise SpecError(f"job secrets: dataset_auth names dataset {idx!r}, which the request lacks") from None
    if secrets.get("webhook_auth_header"):
        data.setdefault("callbacks", {})["auth_header"] = secrets["webhook_auth_header"]
    try:
        return TrainingRequest.model_validate(data)
    except ValidationError as e:
        # str(e) would include input values, secrets among them: list locations and messages only.
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'request'}: {err['msg']}" for err in e.errors())
        raise SpecError(f"invalid training request: {problems}") from None


@contextlib.contextmanager
def work_dir() -> Iterator[Path]:
    """TRAINYARD_WORK_DIR (e.g. a pod's emptyDir, kept) or a temp dir removed afterwards."""
    configured = os.environ.get("TRAINYARD_WORK_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="trainyard-") as tmp:
        yield Path(tmp)


def download_datasets(store: ObjectStore, request: TrainingRequest, dest: Path) -> tuple[list[Path], list[Path]]:
    """Local copies of every dataset, by split, keeping request order.

    Raises:
        DatasetError: a dataset is missing, refused or unreadable by its URI.
    """
    train: list[Path] = []
    validation: list[Path] = []
    for i, ds in enumerate(request.datasets):
        name = ds.source.rstrip("/").rsplit("/", 1)[-1] or "data.jsonl"
        path = dest / ds.split / f"{i:02d}-{name}"
        try:
            store.download_file(ds.source, path)
        except ObjectNotFound as e:
            raise DatasetError(f"datasets[{i}]: no object at {ds.source}") from e
        except (AccessDenied, BadRequest) as e:
            raise DatasetError(f"datasets[{i}]: cannot read {ds.source}: {e}") from e
        (train if ds.split == "train" else validation).append(path)
    return train, validation


# --------------------------------------------------------------------------- exits


def classify(e: BaseException) -> tuple[int, str, bool]:
    """(exit code, one-line message, whether a traceback helps) for an exception leaving ``run``."""
    if isinstance(e, Cancelled | KeyboardInterrupt):
        return exitcodes.CANCELLED, "cancelled (SIGTERM): training stopped", False
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else exitcodes.FAILED
        return code or exitcodes.FAILED, f"exited early (code {e.code})", False
    if _is_oom(e):
        return exitcodes.OOM, "out of memory: lower batch_size or max_sequence_length, or use qlora", False
    if isinstance(e, DatasetError):
        return exitcodes.INVALID_INPUT, f"dataset: {e}", False
    if isinstance(e, SpecError):
        return exitcodes.INVALID_INPUT, str(e), False
    if isinstance(e, ModelLoadError) or _from_pretrained_failure(e):
        return exitcodes.MODEL_LOAD, _one_line(e) if isinstance(e, ModelLoadError) else f"model load: {_one_line(e)}", False
    if isinstance(e, BackendUnavailable):
        return exitcodes.FAILED, str(e), False  # the deployment's to fix, not the user's
    if isinstance(e, Unprocessable):
        detail = e.detail if isinstance(e.detail, list) else [e.detail]
        return exitcodes.INVALID_INPUT, "; ".join(map(str, detail)), False
    if isinstance(e, TrainyardError):
        return exitcodes.FAILED, _one_line(e), False  # storage/runner errors carry a clear message
    return exitcodes.FAILED, f"unexpected {type(e).__name__}: {_one_line(e)}", True


def _is_oom(e: BaseException) -> bool:
    for err in _chain(e):
        if isinstance(err, MemoryError):
            return True
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ())):
            return True
        if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
            return True
    return False


def _from_pretrained_failure(e: BaseException) -> bool:
    """An OSError/ValueError raised inside some ``from_pretrained`` (backends that load models themselves)."""
    if not isinstance(e, OSError | ValueError):
        return False
    tb: TracebackType | None = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "from_pretrained":
            return True
        tb = tb.tb_next
    return False


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def limit_threads_to_cpu_quota() -> None:
    """Size torch's CPU thread pool to the container's CPU limit (before torch is imported).

    torch starts one thread per host core; in a pod limited to a few CPUs those
    threads spin-wait on each other through the quota and CPU training slows
    down many times over.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    quota = cgroup_cpu_quota()
    if quota is not None and quota < (os.cpu_count() or 1):
        os.environ["OMP_NUM_THREADS"] = str(max(1, int(quota)))


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this process may use per period (cgroup v2 cpu.max or v1 cfs quota); None when unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _install_sigterm(reporter: ProgressReporter) -> None:
    """First SIGTERM during training: stop after the current step. Otherwise (or again): stop now."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if reporter.in_training and not reporter.cancel_requested.is_set():
            reporter.cancel_requested.set()
            print("trainyard: SIGTERM received; stopping after the current step", file=sys.stderr, flush=True)
            return
        raise Cancelled()

    signal.signal(signal.SIGTERM, handler)


class Redactor:
    """Replaces every known secret value with ``***`` in text about to be printed."""

    def __init__(self, values: list[str]) -> None:
        self._values: set[str] = set()
        for v in values:
            self._add(v)

    def _add(self, value: str) -> None:
        if isinstance(value, str) and len(value.strip()) >= 4:
            self._values.add(value.strip())

    def add_values(self, data: Any) -> None:
        if isinstance(data, dict):
            for v in data.values():
                self.add_values(v)
        elif isinstance(data, list):
            for v in data:
                self.add_values(v)
        elif isinstance(data, str):
            self._add(data)

    def __call__(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


if __name__ == "__main__":
    sys.exit(main())
