"""The gateway's client of the trainer services: one pooled httpx client, a deadline on every call.

Which service a finetune runs on is data (``common.schemas.service_for``); its URL comes from
settings (``service_urls``: ``TRAINYARD_SERVICE_URLS`` or ``TRAINYARD_SERVICE_URL_<NAME>``). Failures become the common error tree:

    service not reachable                  ServiceUnavailable (503), naming the service and URL
    request sent, no answer in time        ServiceNoAnswer (503): the service may have acted on it
    service answered 4xx                   the same status class, with the service's detail
    service answered 5xx or garbage        TrainerServiceError (502)

Answers are validated into the services' own response models (``JobPublic``, ``LogsPublic``), so a
body that is not one is a TrainerServiceError here, not a KeyError somewhere downstream.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from common.components import trainer_names
from common.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TrainyardError,
    Unprocessable,
)
from common.schemas import EventsPublic, JobPublic, LogsPublic
from common.service_auth import auth_header
from common.settings import Settings

log = logging.getLogger("trainyard.gateway.trainers")
AnswerT = TypeVar("AnswerT", bound=BaseModel)


class TrainerServiceError(TrainyardError):
    """The trainer service answered, but not sensibly (5xx or a body that is not a job)."""

    status_code, error = 502, "trainer_service_error"


class ServiceNoAnswer(ServiceUnavailable):
    """The request was sent but no answer came (a timeout or a dropped connection): the service may
    or may not have acted on it."""


class TrainerClient:
    """Calls ``POST /train``, ``GET /jobs/{id}``, ``POST /jobs/{id}/cancel`` and ``GET /jobs/{id}/logs``
    with the service token (``TRAINYARD_SERVICE_TOKEN``).

    Thread-safe (httpx.Client is); built once in the app lifespan, closed on shutdown."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.urls = {name: settings.service_urls[name] for name in trainer_names()}
        t = settings.service_timeout_seconds
        self.http = httpx.Client(
            timeout=httpx.Timeout(t, connect=min(t, 3.0), pool=min(t, 3.0)),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            headers=auth_header(settings),  # the service credential, on every call
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def url(self, service: str) -> str:
        """Raises: Unprocessable for a service the gateway does not know."""
        try:
            return self.urls[service]
        except KeyError:
            raise Unprocessable(f"unknown trainer service '{service}' (known: {', '.join(sorted(self.urls))})") from None

    def submit(self, service: str, body: dict[str, Any]) -> JobPublic:
        return self._call(JobPublic, service, "POST", "/train", json=body)

    def get_job(self, service: str, job_id: str, *, timeout: float | None = None) -> JobPublic:
        return self._call(JobPublic, service, "GET", f"/jobs/{job_id}", timeout=timeout)

    def events(self, service: str, job_id: str, after: int, *, limit: int, timeout: float | None = None) -> EventsPublic:
        return self._call(EventsPublic, service, "GET", f"/jobs/{job_id}/events", params={"after": after, "limit": limit},
                          timeout=timeout)

    def cancel(self, service: str, job_id: str) -> JobPublic:
        return self._call(JobPublic, service, "POST", f"/jobs/{job_id}/cancel")

    def logs(self, service: str, job_id: str, tail: int) -> LogsPublic:
        return self._call(LogsPublic, service, "GET", f"/jobs/{job_id}/logs", params={"tail": tail})

    def _call(
        self, answer: type[AnswerT], service: str, method: str, path: str, *, timeout: float | None = None, **kw: Any
    ) -> AnswerT:
        base = self.url(service)
        try:
            r = self.http.request(method, base + path, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:  # nothing was sent
            raise ServiceUnavailable(
                f"the {service} trainer service at {base} is unreachable ({type(e).__name__}); is it running?"
            ) from e
        except httpx.TransportError as e:
            raise ServiceNoAnswer(
                f"the {service} trainer service at {base} did not answer {method} {path} ({type(e).__name__})"
            ) from e
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code < 400 and isinstance(body, dict):
            try:
                return answer.model_validate(body)
            except ValidationError as e:
                log.warning("%s %s%s answered a body that is not a %s: %s", method, base, path, answer.__name__, e)
                raise TrainerServiceError(
                    f"the {service} trainer service answered {method} {path} with something that is not a "
                    f"{answer.__name__}"
                ) from e
        detail = body.get("detail") if isinstance(body, dict) else None
        detail = detail if detail is not None else f"HTTP {r.status_code}"
        if r.status_code == 401:  # our credential, not the caller's: never a 401 to the user
            log.error("the %s trainer service refused the service token (is TRAINYARD_SERVICE_TOKEN the same "
                      "on both?)", service)
            raise TrainerServiceError(f"the {service} trainer service refused the gateway's credentials")
        errors: dict[int, type[TrainyardError]] = {
            400: BadRequest, 404: NotFound, 409: Conflict, 422: Unprocessable,
        }
        if r.status_code in errors:
            raise errors[r.status_code](detail)
        if r.status_code == 503:
            raise ServiceUnavailable(f"the {service} trainer service is unavailable: {detail}")
        log.warning("%s %s%s answered %s", method, base, path, r.status_code)
        raise TrainerServiceError(f"the {service} trainer service answered HTTP {r.status_code} to {method} {path}")
