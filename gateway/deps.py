"""Dependencies of the gateway routes, as ``Annotated`` aliases.

Callers are resolved by an ``Auth`` pair (read, write): ``PUBLIC`` checks a user's API key and its
scopes, ``INTERNAL`` the control plane's token plus the workspace it names. The dataset and finetune
routers are built once per ``Auth`` (``routes.datasets.build_router``), so /v1/* and
/v1/dataservice/* share every route and differ only in who may call them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request, Security, params
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from common import idempotency
from common.schemas import MAX_QUERY_INT, Scope
from gateway import auth
from gateway.auth import Principal
from gateway.context import Gateway


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
# one page of a list route: ?limit=&offset=
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_QUERY_INT)]

_api_key = APIKeyHeader(name="x-portkey-api-key", auto_error=False, scheme_name="ApiKey",
                        description="A Trainyard API key (also accepted as Authorization: Bearer).")
_bearer = HTTPBearer(auto_error=False, scheme_name="BearerApiKey")
_internal_bearer = HTTPBearer(auto_error=False, scheme_name="InternalToken",
                              description="TRAINYARD_INTERNAL_TOKEN (control plane only).")


def _user(scope: Scope) -> Callable[..., Principal]:
    def dependency(
        gw: GatewayDep,
        key: Annotated[str | None, Security(_api_key)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    ) -> Principal:
        return auth.authenticate(gw.engine, key or (bearer.credentials if bearer else None), scope)

    return dependency


def _internal(
    gw: GatewayDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_internal_bearer)] = None,
    x_workspace_id: Annotated[str | None, Header(description="Workspace the control plane acts on.")] = None,
) -> Principal:
    return auth.authenticate_internal(gw.settings, bearer.credentials if bearer else None, x_workspace_id)


@dataclass(frozen=True)
class Auth:
    read: Callable[..., Principal]
    write: Callable[..., Principal]


PUBLIC = Auth(read=_user(Scope.read), write=_user(Scope.write))
INTERNAL = Auth(read=_internal, write=_internal)

ReaderDep = Annotated[Principal, Depends(PUBLIC.read)]


def idempotent(auth: Auth) -> params.Depends:
    """The ``Idempotency-Key`` dependency of a route that creates or starts something: keys are the
    caller's workspace's, checked after authentication (common.idempotency)."""

    def workspace(who: Annotated[Principal, Depends(auth.write)]) -> str:
        return f"workspace:{who.workspace_id}"

    return Depends(idempotency.idempotent(workspace))
