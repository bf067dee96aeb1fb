"""How a job receives its secrets: a file only its user can read, which it reads and removes at start.

An environment variable would be readable for the job's whole life (``/proc/<pid>/environ``,
``ps e``) and inherited by every child; the file is gone before training starts. The local runner
writes it next to the job's log (mode 0600); on Kubernetes it is the per-job Secret mounted as a
volume (mode 0400, read-only, so removing it is skipped there; it dies with the Job). The job's
environment holds only the path, ``TRAINYARD_JOB_SECRETS_FILE``.

The file is JSON: ``{"secrets": {...TrainingRequest.secrets()...}, "progress_token": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

FILE_ENV = "TRAINYARD_JOB_SECRETS_FILE"


class JobSecretsError(ValueError):
    """The secrets file is missing or not what the runner writes (the message never holds its content)."""


def write(path: Path, payload: str) -> None:
    """Create ``path`` readable and writable by this user only (an older file is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(payload)


def take(environ: MutableMapping[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Read the file named by ``TRAINYARD_JOB_SECRETS_FILE``, remove it, drop the variable.

    Returns (secrets, progress token); both empty when no file is named (a job without either).
    Raises: JobSecretsError."""
    env = os.environ if environ is None else environ
    name = env.pop(FILE_ENV, "")
    if not name:
        return {}, ""
    path = Path(name)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise JobSecretsError(f"{FILE_ENV}: cannot read {path} ({type(e).__name__})") from None
    with contextlib.suppress(OSError):  # read-only on Kubernetes (a Secret volume)
        path.unlink()
    try:
        data = json.loads(raw)
    except ValueError:
        raise JobSecretsError(f"{FILE_ENV}: {path} is not valid JSON") from None
    secrets, token = (data.get("secrets"), data.get("progress_token")) if isinstance(data, dict) else (None, None)
    if not isinstance(secrets, dict) or not isinstance(token, str | None):
        raise JobSecretsError(f"{FILE_ENV}: {path} is not a job secrets file")
    return secrets, token or ""
