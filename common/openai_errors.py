"""OpenAI's error shape for OpenAI-compatible routes, in the gateway and the inference service alike.

Clients of ``/v1/chat/completions`` (the ``openai`` SDK, LangChain, curl scripts written for OpenAI)
read ``{"error": {"message", "type", "param", "code"}}``; every other route keeps the project's
``{"error", "detail", "status_code"}``. A router opts in with ``route_class=OpenAIRoute``: errors
raised while a request on it is handled (validation, authentication, the common error tree) are
rendered in OpenAI's shape with the same status code the project's handlers would use.

    422  invalid_request_error   a parameter is out of range or unsupported (param names it)
    401  authentication_error    missing or bad API key
    403  permission_error        the key lacks the scope
    404  not_found_error         no such model in this workspace
    409  conflict_error          the model is still training
    5xx  server_error / service_unavailable_error
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from common.errors import TrainyardError
from common.fieldhints import explain

log = logging.getLogger("trainyard.openai")

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    503: "service_unavailable_error",
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The body of every error on an OpenAI-compatible route."""

    error: OpenAIErrorDetail


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    detail = OpenAIErrorDetail(message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code)
    return JSONResponse(OpenAIError(error=detail).model_dump(), status, headers=headers)


def from_exception(exc: Exception, route: Any = None) -> JSONResponse:
    """The OpenAI-shaped response for any exception; unknown ones never leak their text."""
    if isinstance(exc, RequestValidationError):
        errors = explain(exc.errors(), route)
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        param = ".".join(loc) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}" for e in errors)
        return error_response(422, message or "invalid request", code="invalid_value", param=param)
    if isinstance(exc, TrainyardError):
        if exc.status_code >= 500 and type(exc) is TrainyardError:
            return error_response(500, "internal error", code="internal_error")
        message = exc.detail if isinstance(exc.detail, str) else "; ".join(map(str, exc.detail)) if isinstance(
            exc.detail, list) else str(exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return error_response(exc.status_code, message, code=exc.error, headers=headers)
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal error", code="internal_error")


class OpenAIRoute(APIRoute):
    """An APIRoute whose errors come out in OpenAI's shape (``APIRouter(route_class=OpenAIRoute)``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error is rendered, none escapes as text
                return from_exception(exc, request.scope.get("route"))

        return openai_handler


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError} for code in (401, 403, 404, 409, 422, 502, 503)
}
