"""TrainerClient's answers are the services' own models; anything else is a clear 502.

A trainer service that answers with a body that is not a job cannot be made from the real
service, so an httpx transport stands in for the service here (the gateway flow tests use the
real one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from common.errors import NotFound
from common.schemas import JobPublic, JobStatus, LogsPublic
from common.settings import Settings
from gateway.trainers import TrainerClient, TrainerServiceError

JOB = JobPublic(
    id="ft-1-1-ab", backend="huggingface", status=JobStatus.running, created_at=datetime(2026, 1, 1, tzinfo=UTC),
    updated_at=datetime(2026, 1, 1, tzinfo=UTC), labels={"finetune": "ft-1"}, request_digest="d" * 64,
)


def _service(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/jobs/ft-1-1-ab":
        return httpx.Response(200, json=JOB.model_dump(mode="json"))
    if path == "/jobs/ft-1-1-ab/logs":
        return httpx.Response(200, json={"job_id": "ft-1-1-ab", "logs": ["a", "b"], "count": 2})
    if path == "/jobs/broken":
        return httpx.Response(200, json={"id": "broken", "status": "exploded"})
    if path == "/jobs/broken/logs":
        return httpx.Response(200, content=json.dumps({"lines": "not a list"}))
    return httpx.Response(404, json={"error": "not_found", "detail": f"job '{path}' not found", "status_code": 404})


@pytest.fixture
def client() -> Iterator[TrainerClient]:
    c = TrainerClient(Settings(), transport=httpx.MockTransport(_service))
    yield c
    c.close()


def test_answers_are_typed(client: TrainerClient) -> None:
    job = client.get_job("huggingface", "ft-1-1-ab")
    assert isinstance(job, JobPublic) and job == JOB
    logs = client.logs("huggingface", "ft-1-1-ab", tail=2)
    assert isinstance(logs, LogsPublic) and logs.logs == ["a", "b"] and logs.count == 2


def test_a_body_that_is_not_the_model_is_a_502_naming_the_service(client: TrainerClient) -> None:
    with pytest.raises(TrainerServiceError) as e:
        client.get_job("huggingface", "broken")
    assert e.value.status_code == 502 and "huggingface" in str(e.value.detail) and "JobPublic" in str(e.value.detail)
    with pytest.raises(TrainerServiceError, match="LogsPublic"):
        client.logs("huggingface", "broken", tail=1)
    with pytest.raises(NotFound, match="not found"):
        client.get_job("huggingface", "missing")
