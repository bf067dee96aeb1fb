"""Property-based fuzzing of every OpenAPI we serve, against real running servers: the gateway (with
an admin key) and each trainer service. Bounded and derandomized so it runs in well under a
minute and fails the same way twice. Checks: no 5xx, responses match their declared schemas, and a
405 says which methods are allowed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import allow_header_conformance, response_schema_conformance

from tests.gateway.conftest import ADMIN_KEY, gateway_settings
from tests.utils.factories import place_samples
from tests.utils.server import Server

CHECKS = [not_a_server_error, response_schema_conformance, allow_header_conformance]
BOUNDED = settings(max_examples=4, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
SERVICES = ("huggingface", "unsloth", "dpo")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    place_samples(tmp / "objects")
    env = {
        **gateway_settings(f"sqlite:///{tmp / 'trainyard.db'}", tmp / "objects", tmp / "logs"),
        "HF_HUB_OFFLINE": "1",
        # jobs run by this interpreter, which lacks unsloth: the unsloth service answers at once
        "TRAINYARD_PYTHON_EXECUTABLE": sys.executable,
    }
    started: dict[str, Server] = {}
    try:
        for name in SERVICES:
            started[name] = Server(f"services.{name}.app:app", env, log_path=tmp / f"{name}.log").start()
        urls = {f"TRAINYARD_SERVICE_URL_{name.upper()}": srv.url for name, srv in started.items()}
        started["gateway"] = Server("gateway.app:app", {**env, **urls}, log_path=tmp / "gateway.log").start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def fuzz(server: Server, headers: dict[str, str] | None = None) -> None:
    """Every operation of the server's OpenAPI, a few generated cases each; all failures in one assert."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @BOUNDED
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as e:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {type(e).__name__}: {str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)


def test_gateway(servers: dict[str, Server]) -> None:
    fuzz(servers["gateway"], {"x-portkey-api-key": ADMIN_KEY})


@pytest.mark.parametrize("name", SERVICES)
def test_trainer_service(servers: dict[str, Server], name: str) -> None:
    fuzz(servers[name])
