"""The local stack behind ``make up`` / ``make down``: the gateway on :8080 and every service
(``common.components``: the trainers and the inference service, :8081-8084) whose app module imports,
as background processes with pid files in var/run and logs in var/logs under TRAINYARD_HOME.

    python -m gateway.localstack up | down | status

``up`` is idempotent (a running component is left alone) and waits until everything it started
answers /health. A fresh checkout gets a random admin API key, upload-signing secret, service token
(the gateway's credential on the trainer services), internal token (the control plane's credential on
/v1/dataservice) and secret-column key in var/run (unless TRAINYARD_ADMIN_API_KEY /
_UPLOAD_SIGNING_SECRET / _SERVICE_TOKEN / _INTERNAL_TOKEN / _SECRET_KEYS are set), each mode 0600, so
the demo, curl and the Postman collection work without a manual step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from common import components
from common.secretbox import SecretBox
from common.settings import VAR, get_settings

REPO = Path(__file__).resolve().parents[1]
HOME = get_settings().home
RUN_DIR = HOME / VAR / "run"
LOG_DIR = HOME / VAR / "logs"
# the services first, the public gateway last (it checks them on start)
COMPONENTS = tuple(c.name for c in components.of_kind(components.Kind.trainer, components.Kind.inference)) + ("gateway",)
LOCAL_OUTBOUND_ALLOW = '["127.0.0.0/8", "::1/128"]'
SECRETS = {"admin-key": "TRAINYARD_ADMIN_API_KEY", "upload-secret": "TRAINYARD_UPLOAD_SIGNING_SECRET",
           "service-token": "TRAINYARD_SERVICE_TOKEN", "internal-token": "TRAINYARD_INTERNAL_TOKEN"}
SECRET_KEY_FILE = "secret-key"  # Fernet key of the secret columns, passed as TRAINYARD_SECRET_KEYS
HEALTH_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


def url(component: str) -> str:
    return components.components()[component].local_url


def _pid(component: str) -> int | None:
    """The pid of a running component started by ``up``, or None (a stale pid file is removed)."""
    path = RUN_DIR / f"{component}.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    return pid


def _importable(component: str) -> bool:
    """Whether the component's app module exists and imports (checked in a subprocess: cheap and isolated)."""
    module = components.components()[component].app.partition(":")[0]
    if importlib.util.find_spec(module.partition(".")[0]) is None:
        return False
    return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True).returncode == 0


def _generated(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def secret_env() -> dict[str, str]:
    """The stack's credentials: from the environment, else from var/run (created once)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    env = {}
    for name, var in SECRETS.items():
        env[var] = os.environ.get(var) or _generated(RUN_DIR / name, lambda: "ty_" + secrets.token_urlsafe(32))
    keys_var = "TRAINYARD_SECRET_KEYS"
    env[keys_var] = os.environ.get(keys_var) or json.dumps([_generated(RUN_DIR / SECRET_KEY_FILE, SecretBox.generate_key)])
    return env


def health(component: str) -> str | None:
    """The component's /health status ("healthy", or "starting" while it checks its backend), None if it does not answer."""
    try:
        r = httpx.get(f"{url(component)}/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        return str(r.json().get("status", "healthy"))
    except (ValueError, AttributeError):
        return "healthy"


def healthy(component: str) -> bool:
    return health(component) is not None


def up() -> list[str]:
    """Start what is not running; return what this call started. Raises SystemExit if one fails."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **secret_env(), "PYTHONPATH": str(REPO)}
    # the local stack's webhooks and streams may reach this machine (never the private ranges around it)
    env.setdefault("TRAINYARD_OUTBOUND_ALLOW", LOCAL_OUTBOUND_ALLOW)
    started = []
    for component in COMPONENTS:
        if (pid := _pid(component)) is not None:
            print(f"{component}: already running (pid {pid})")
            continue
        if component != "gateway" and not _importable(component):
            print(f"{component}: {components.components()[component].app} does not import (yet); not started")
            continue
        if healthy(component):
            print(f"{component}: something else already answers on {url(component)}; not started")
            continue
        log = (LOG_DIR / f"{component}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "serve", component], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        (RUN_DIR / f"{component}.pid").write_text(f"{proc.pid}\n")
        print(f"{component}: starting on {url(component)} (pid {proc.pid}, log {LOG_DIR / component}.log)")
        started.append(component)
    deadline = time.monotonic() + HEALTH_TIMEOUT
    waiting = set(started)
    while waiting and time.monotonic() < deadline:
        for component in sorted(waiting):
            if _pid(component) is None:
                raise SystemExit(f"{component} exited while starting; see {LOG_DIR / component}.log")
            if (state := health(component)) is not None:
                waiting.discard(component)
                note = " (still checking its backend; GET /v1/services shows 'starting' until it is done)"
                print(f"{component}: {state}{note if state == 'starting' else ''}")
        time.sleep(0.3)
    if waiting:
        raise SystemExit(f"not healthy after {HEALTH_TIMEOUT:.0f}s: {', '.join(sorted(waiting))}; see {LOG_DIR}/")
    return started


def down(components: tuple[str, ...] | list[str] = COMPONENTS) -> None:
    """Stop components started by ``up`` (SIGTERM, then SIGKILL after STOP_TIMEOUT)."""
    for component in reversed(list(components)):
        pid = _pid(component)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _pid(component) is not None:
            time.sleep(0.1)
        if _pid(component) is not None:
            os.kill(pid, signal.SIGKILL)
        (RUN_DIR / f"{component}.pid").unlink(missing_ok=True)
        print(f"{component}: stopped (pid {pid})")


def status() -> None:
    for component in COMPONENTS:
        pid = _pid(component)
        state = health(component) or "not answering"
        print(f"{component:<12} {url(component):<24} {'pid ' + str(pid) if pid else 'not started by make up':<24} {state}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.localstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args()
    if args.command == "up":
        up()
        print(f"gateway: {url('gateway')}/docs  (API key: {RUN_DIR}/admin-key "
              "unless TRAINYARD_ADMIN_API_KEY is set)")
    elif args.command == "down":
        down()
    else:
        status()


if __name__ == "__main__":
    main()
