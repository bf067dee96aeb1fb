"""The service credential: who may call a trainer service (or any other internal service).

Every route of an internal service except ``/health`` takes ``Authorization: Bearer
<TRAINYARD_SERVICE_TOKEN>``, the credential only the gateway holds; a wrong or missing token is 401
in the common error body. Training jobs never hold it: they report on a listener of their own with
their per-job token (``common.service``). Use it as

    check_service_token(settings)                          # at start-up: no token, no start
    app.state.service_token = service_token_bytes(settings)
    router = APIRouter(dependencies=[Depends(require_service_token)])
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.errors import Unauthorized
from common.settings import Settings

log = logging.getLogger("trainyard.service_auth")

TOKEN_ENV = "TRAINYARD_SERVICE_TOKEN"
DEV_MODE_ENV = "TRAINYARD_DEV_MODE"
MIN_TOKEN_LENGTH = 16

_bearer = HTTPBearer(
    auto_error=False, scheme_name="ServiceToken", description=f"{TOKEN_ENV}: the gateway's service credential."
)


def service_token_bytes(settings: Settings) -> bytes | None:
    """The configured token, or None when none is set (an empty value counts as none)."""
    if settings.service_token is None:
        return None
    token = settings.service_token.get_secret_value().strip()
    return token.encode() if token else None


def check_service_token(settings: Settings, what: str = "this service") -> None:
    """Refuse to start without a usable token unless dev mode says so (then warn loudly).

    Raises: RuntimeError (no token outside dev mode, or a token too short to be random)."""
    token = service_token_bytes(settings)
    if token is None:
        if not settings.dev_mode:
            raise RuntimeError(
                f"{TOKEN_ENV} is not set: {what} would accept any caller. Set it to a random value shared with "
                f"the gateway, or set {DEV_MODE_ENV}=1 to run open on a developer machine"
            )
        log.warning("!!! %s=1 and no %s: %s accepts requests from ANY caller; never run it like this on a "
                    "shared network !!!", DEV_MODE_ENV, TOKEN_ENV, what)
        return
    if len(token) < MIN_TOKEN_LENGTH:
        raise RuntimeError(f"{TOKEN_ENV} is shorter than {MIN_TOKEN_LENGTH} characters; use a random value")


def require_service_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """FastAPI dependency: the caller presents the service token (constant-time compare).

    Reads ``app.state.service_token``, which the lifespan sets (None only in dev mode: every caller
    passes); an app whose lifespan never ran refuses everyone. Raises: Unauthorized."""
    expected: bytes | None = getattr(request.app.state, "service_token", b"")
    if expected is None:
        return
    if credentials is None or not credentials.credentials:
        raise Unauthorized("this service takes Authorization: Bearer <service token>")
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("invalid service token")


def auth_header(settings: Settings) -> dict[str, str]:
    """The header a client (the gateway) sends on every call to a service."""
    token = service_token_bytes(settings)
    return {"Authorization": f"Bearer {token.decode()}"} if token else {}
