"""Run a real uvicorn server in a subprocess, as a user would, and stop it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
# The credentials every test server gets unless its env says otherwise (docs/security.md).
SERVICE_TOKEN = "test-service-token-0123456789abcdef"
SECRET_KEY = "Yx2u3qRzZ0l8mBv5n7pQwE1rT4yU6iO9aSdFgHjKlZc="


def service_headers(token: str = SERVICE_TOKEN) -> dict[str, str]:
    """What the gateway sends a trainer service."""
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    app: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    report_port: int = field(default_factory=free_port)  # a trainer service's job-report listener
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def report_url(self) -> str:
        return f"http://127.0.0.1:{self.report_port}"

    def client(self, token: str | None = SERVICE_TOKEN, timeout: float = 60) -> httpx.Client:
        """A client of this server presenting the service token (None: no credential)."""
        return httpx.Client(base_url=self.url, headers=service_headers(token) if token else {}, timeout=timeout)

    def start(self, timeout: float = 30) -> Server:
        env = {
            **os.environ, "TRAINYARD_SERVICE_TOKEN": SERVICE_TOKEN, "TRAINYARD_SECRET_KEYS": f'["{SECRET_KEY}"]',
            **self.env, "TRAINYARD_PORT": str(self.port), "TRAINYARD_REPORT_PORT": str(self.report_port),
            "PYTHONPATH": str(REPO),
        }
        log_path = self.log_path or Path(os.devnull)
        with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.app} did not become healthy in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(client: httpx.Client, path: str, pred, timeout: float = 180, interval: float = 0.25) -> dict:
    """Poll GET path until pred(json) holds; fails with the last body on timeout."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(path)
        r.raise_for_status()
        body = r.json()
        if pred(body):
            return body
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting on {path}; last: {body}")
