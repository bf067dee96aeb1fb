"""The one exception tree and its HTTP mapping.

    TrainyardError                 500  internal_error (message never leaks internals)
    ├── BadRequest                 400  bad_request
    ├── Unauthorized               401  unauthorized
    ├── Forbidden                  403  forbidden
    ├── NotFound                   404  not_found
    ├── Conflict                   409  conflict
    ├── Unprocessable              422  unprocessable
    │   └── BackendUnavailable     422  backend_unavailable
    ├── PayloadTooLarge            413  payload_too_large
    ├── StorageError               502  storage_error
    │   ├── ObjectNotFound         404  object_not_found
    │   └── AccessDenied           403  access_denied
    ├── RunnerError                502  runner_error
    └── ServiceUnavailable         503  service_unavailable
        └── BackendStarting        503  backend_starting (a start-up check still runs; retry soon)

Every HTTP error body is ``{"error", "detail", "status_code"}``; Starlette resolves
handlers by MRO, so one handler for ``TrainyardError`` covers the tree.
"""

from __future__ import annotations

from typing import Any


class TrainyardError(Exception):
    status_code = 500
    error = "internal_error"

    def __init__(self, detail: Any = "", *, error: str | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        if error:
            self.error = error

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "status_code": self.status_code}


class BadRequest(TrainyardError):
    status_code, error = 400, "bad_request"


class Unauthorized(TrainyardError):
    status_code, error = 401, "unauthorized"


class Forbidden(TrainyardError):
    status_code, error = 403, "forbidden"


class NotFound(TrainyardError):
    status_code, error = 404, "not_found"


class Conflict(TrainyardError):
    status_code, error = 409, "conflict"


class Unprocessable(TrainyardError):
    status_code, error = 422, "unprocessable"


class BackendUnavailable(Unprocessable):
    error = "backend_unavailable"


class PayloadTooLarge(TrainyardError):
    status_code, error = 413, "payload_too_large"


class StorageError(TrainyardError):
    status_code, error = 502, "storage_error"


class ObjectNotFound(StorageError):
    status_code, error = 404, "object_not_found"


class AccessDenied(StorageError):
    status_code, error = 403, "access_denied"


class RunnerError(TrainyardError):
    status_code, error = 502, "runner_error"


class ServiceUnavailable(TrainyardError):
    status_code, error = 503, "service_unavailable"


class BackendStarting(ServiceUnavailable):
    error = "backend_starting"


def install_handlers(app: Any) -> None:
    """Map every error a FastAPI app can raise onto the one envelope.

    Validation errors keep loc/msg but drop the offending input, which may hold a secret.
    Unknown exceptions become a bare 500 whose detail never includes ``str(e)``.
    """
    import logging

    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    log = logging.getLogger("trainyard.errors")

    def reply(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": error, "detail": detail, "status_code": status}, status, headers=headers)

    async def on_trainyard(_: Any, exc: TrainyardError) -> JSONResponse:
        if exc.status_code >= 500 and type(exc) is TrainyardError:
            return reply(500, "internal_error", "internal error")
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return reply(exc.status_code, exc.error, exc.detail, headers)

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        from common.fieldhints import explain

        detail = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in explain(exc.errors(), request.scope.get("route"))
        ]
        return reply(422, "validation_error", detail)

    async def on_http(request: Any, exc: HTTPException) -> JSONResponse:
        names = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path serves, not only the first route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return reply(exc.status_code, names.get(exc.status_code, "http_error"), exc.detail, headers or None)

    async def on_unknown(_: Any, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return reply(500, "internal_error", "internal error")

    app.add_exception_handler(TrainyardError, on_trainyard)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unknown)


def _allowed_methods(request: Any) -> list[str]:
    """The methods the request's path serves (for a 405's ``Allow``): each is tried against the routes."""
    from starlette.routing import Match

    routes = request.app.router.routes
    return [
        method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
