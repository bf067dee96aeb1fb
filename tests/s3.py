"""A real S3 endpoint for tests: moto's server on a free localhost port.

Imported by tests/conftest.py (and directly by modules that need it standalone).
The fixture touches no environment variables and creates no buckets, so each
test decides its own credentials (via monkeypatch) and makes its own bucket.

moto does not verify presigned signatures or expiry (see shared/stack-notes.md),
so tests of those must target URLs we sign and check ourselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# moto accepts any credentials; these are passed explicitly so make_bucket needs no env.
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server once per session on 127.0.0.1 (port chosen by the OS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


def make_bucket(endpoint_url: str, name: str, region: str = "us-east-1") -> str:
    """Create bucket ``name`` on the test endpoint and return its name."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=DUMMY_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=name)
    return name
