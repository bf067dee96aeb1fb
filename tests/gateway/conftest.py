"""Gateway tests run the gateway and the HuggingFace trainer service as real uvicorn subprocesses
(tests/utils/server.py) on a real database (SQLite, or PostgreSQL where a test takes the
``database_url`` parameter) and real storage (file://, or S3 on moto's server).

Starting a server costs seconds, so tests that need nothing special share one gateway for the
session and each gets its own workspace and API key there (``tenant``): workspaces are exactly the
isolation the gateway guarantees, so the tests cannot see each other's data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.utils.server import Server

ADMIN_KEY = "ty_test_admin_key_0123456789abcdef"
INTERNAL_TOKEN = "internal-token-0123456789abcdef"
SIGNING_SECRET = "upload-signing-secret-0123456789"
GATEWAY = "gateway.app:app"
INTERNAL_GATEWAY = "gateway.app:internal_app"
HF_SERVICE = "services.huggingface.app:app"
# Nothing listens on port 9 (discard, privileged): a trainer service that is down, refused at once.
DEAD_URL = "http://127.0.0.1:9"
# Limits of the shared gateway (small, so size limits are testable with small files).
SHARED_MAX_UPLOAD_BYTES = 50_000
SHARED_MAX_ERRORS = 8


def gateway_settings(database_url: str, storage_root: Path, log_dir: Path) -> dict[str, str]:
    return {
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(log_dir),
        "TRAINYARD_CANCEL_GRACE_SECONDS": "3",
        "TRAINYARD_ADMIN_API_KEY": ADMIN_KEY,
        "TRAINYARD_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "TRAINYARD_UPLOAD_SIGNING_SECRET": SIGNING_SECRET,
        "TRAINYARD_REFRESH_INTERVAL_SECONDS": "0.5",
        # no hub here: hub ids pass unchecked unless a test turns the check on (test_model_check.py)
        "TRAINYARD_MODEL_HUB_CHECK": "false",
        # every trainer service is down unless a test starts one and points the gateway at it
        "TRAINYARD_SERVICE_URL_HUGGINGFACE": DEAD_URL,
        "TRAINYARD_SERVICE_URL_UNSLOTH": DEAD_URL,
        "TRAINYARD_SERVICE_URL_DPO": DEAD_URL,
    }


@pytest.fixture
def base_env(database_url: str, storage_root: Path, tmp_path: Path) -> dict[str, str]:
    return gateway_settings(database_url, storage_root, tmp_path / "logs")


@pytest.fixture
def hf_service(base_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    with Server(HF_SERVICE, base_env, log_path=tmp_path / "service.log") as srv:
        yield srv


@pytest.fixture
def gateway_env(base_env: dict[str, str]) -> dict[str, str]:
    return dict(base_env)


@pytest.fixture
def gateway(gateway_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """A gateway of this test's own, every trainer service down."""
    with Server(GATEWAY, gateway_env, log_path=tmp_path / "gateway.log") as srv:
        yield srv


@dataclass
class SharedGateway:
    server: Server
    env: dict[str, str]
    storage_root: Path
    log_path: Path


@pytest.fixture(scope="session")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    """One gateway for the session (SQLite, file:// storage, small limits, trainer services down)."""
    root = tmp_path_factory.mktemp("shared-gateway")
    (root / "objects").mkdir()
    env = {
        **gateway_settings(f"sqlite:///{root / 'trainyard.db'}", root / "objects", root / "logs"),
        "TRAINYARD_MAX_UPLOAD_BYTES": str(SHARED_MAX_UPLOAD_BYTES),
        "TRAINYARD_MAX_DIRECT_UPLOAD_BYTES": str(SHARED_MAX_UPLOAD_BYTES),
        "TRAINYARD_VALIDATION_MAX_ERRORS": str(SHARED_MAX_ERRORS),
    }
    with Server(GATEWAY, env, log_path=root / "gateway.log") as srv:
        yield SharedGateway(srv, env, root / "objects", root / "gateway.log")


@dataclass
class Tenant:
    """A fresh workspace on the shared gateway, with a write key for it."""

    shared: SharedGateway
    workspace: str
    key: str

    @property
    def url(self) -> str:
        return self.shared.server.url

    @property
    def storage_root(self) -> Path:
        return self.shared.storage_root

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-portkey-api-key": key or self.key}, timeout=60)


@pytest.fixture
def tenant(shared_gateway: SharedGateway) -> Tenant:
    from common.db import make_engine
    from common.schemas import Scope
    from gateway import auth

    workspace = f"ws-{uuid.uuid4().hex[:10]}"
    engine = make_engine(shared_gateway.env["TRAINYARD_DATABASE_URL"])
    try:
        _, key = auth.create_key(engine, name="test", workspace_id=workspace, scopes=[Scope.write])
    finally:
        engine.dispose()
    return Tenant(shared_gateway, workspace, key)
