"""Shared fixtures: a real S3 endpoint (moto server), SQLite and PostgreSQL databases,
the locally built tiny model and sample data placed in object storage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import make_bucket, s3_server  # noqa: F401  (fixture re-export)
from tests.utils.factories import place_samples

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The project's own tiny pre-trained Llama (built once, cached under var/models)."""
    from common.train.tiny_model import build_tiny_model

    return build_tiny_model(REPO / "var" / "models" / "tiny-llama")


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as e:  # any failure means: no server to test against
        return f"PostgreSQL at 127.0.0.1:5432 not reachable: {type(e).__name__}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session; dropped afterwards."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"trainyard_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trainyard.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "objects"
    root.mkdir()
    return root


@pytest.fixture
def sample_uris(storage_root: Path) -> dict[str, str]:
    """The shipped SFT/DPO samples copied into the file:// store, as a user would upload them."""
    return place_samples(storage_root)
