"""API keys and callers.

A user's key (``x-portkey-api-key: <key>`` or ``Authorization: Bearer <key>``) belongs to one
workspace and carries scopes; only its SHA-256 is stored (keys are 256-bit random, so a slow hash
adds nothing), and no log line ever holds a key. The control plane calls ``/v1/dataservice/*``
with a separate internal token and names the workspace it acts on.

    401  no key, an unknown key or a revoked one
    403  a valid key without the scope the route needs
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from common.db import tx
from common.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable, Unauthorized
from common.schemas import ApiKeyPublic, Scope
from common.settings import Settings
from gateway import db

log = logging.getLogger("trainyard.gateway.auth")

KEY_PREFIX = "ty_"
WORKSPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is approximate: no write on every request
PLACEHOLDERS = frozenset({"changeme", "change-me", "change_me", "secret", "password", "admin", "test", "placeholder",
                          "todo", "xxx", "replace-me", "your-key-here"})
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """Who is calling: a workspace and what it may do there."""

    workspace_id: str
    scopes: frozenset[Scope]
    key_id: str | None = None  # None for the internal caller
    internal: bool = False

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or (scope == Scope.read and Scope.write in self.scopes)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_workspace(workspace_id: str) -> str:
    """Raises: BadRequest for a name that cannot be a storage path segment."""
    if not WORKSPACE_RE.match(workspace_id or ""):
        raise BadRequest("workspace ids are 1-64 characters of a-z, 0-9, '-' and '_', starting alphanumeric")
    return workspace_id


def _public(row: object) -> ApiKeyPublic:
    r = dict(row)  # type: ignore[call-overload]
    return ApiKeyPublic(
        id=r["id"], name=r["name"], workspace_id=r["workspace_id"], scopes=r["scopes"], prefix=r["prefix"],
        created_at=db.aware(r["created_at"]), last_used_at=db.aware(r["last_used_at"]),
        revoked_at=db.aware(r["revoked_at"]),
    )


def create_key(
    engine: Engine, *, name: str, workspace_id: str, scopes: list[Scope], key: str | None = None
) -> tuple[ApiKeyPublic, str]:
    """Store a new key's hash; return it and the key, which is shown this once only.

    Raises: BadRequest (bad workspace id or no scope)."""
    check_workspace(workspace_id)
    if not scopes:
        raise BadRequest("a key needs at least one scope")
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": f"key-{uuid.uuid4().hex[:12]}",
        "name": name,
        "workspace_id": workspace_id,
        "scopes": sorted({Scope(s).value for s in scopes}),
        "key_hash": hash_key(key),
        "prefix": key[:10],
    }
    with tx(engine) as conn:
        db.insert_key(conn, row)
        return _public(db.key_by_hash(conn, str(row["key_hash"]))), key


def list_keys(engine: Engine, workspace_id: str | None = None) -> list[ApiKeyPublic]:
    with tx(engine) as conn:
        return [_public(r) for r in db.list_keys(conn, workspace_id)]


def revoke_key(engine: Engine, key_id: str) -> None:
    """Raises: NotFound (no such key, or already revoked)."""
    with tx(engine) as conn:
        if not db.revoke_key(conn, key_id):
            raise NotFound(f"no active key '{key_id}'")


def seed_admin_key(engine: Engine, settings: Settings) -> None:
    """Store TRAINYARD_ADMIN_API_KEY (hashed, every scope) unless it is already known. A revoked
    admin key stays revoked: the environment does not resurrect it."""
    if settings.admin_api_key is None:
        return
    key = settings.admin_api_key.get_secret_value()
    with tx(engine) as conn:
        existing = db.key_by_hash(conn, hash_key(key))
    if existing is None:
        create_key(engine, name="admin", workspace_id=settings.admin_workspace, scopes=list(Scope), key=key)
        log.info("seeded the admin API key for workspace '%s'", settings.admin_workspace)
    elif existing["revoked_at"] is not None:
        log.warning("TRAINYARD_ADMIN_API_KEY is set but that key was revoked; it stays revoked")


def is_admin(engine: Engine, settings: Settings, who: Principal) -> bool:
    """Whether the caller uses the seeded admin key (TRAINYARD_ADMIN_API_KEY)."""
    if settings.admin_api_key is None or who.key_id is None:
        return False
    with tx(engine) as conn:
        row = db.key_by_hash(conn, hash_key(settings.admin_api_key.get_secret_value()))
    return row is not None and row["id"] == who.key_id and row["revoked_at"] is None


def check_secrets(settings: Settings) -> None:
    """Refuse to start with a placeholder or short secret (the name is reported, never the value).

    Raises: RuntimeError."""
    for env, value in (
        ("TRAINYARD_ADMIN_API_KEY", settings.admin_api_key),
        ("TRAINYARD_INTERNAL_TOKEN", settings.internal_token),
        ("TRAINYARD_UPLOAD_SIGNING_SECRET", settings.upload_signing_secret),
    ):
        if value is None:
            continue
        secret = value.get_secret_value()
        if secret.strip().lower() in PLACEHOLDERS or len(secret) < MIN_SECRET_LENGTH:
            raise RuntimeError(
                f"{env} is a placeholder or shorter than {MIN_SECRET_LENGTH} characters; set a random value "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))') or unset it"
            )


def authenticate(engine: Engine, key: str | None, scope: Scope) -> Principal:
    """Raises: Unauthorized (no, unknown or revoked key), Forbidden (scope missing)."""
    if not key:
        raise Unauthorized("missing API key: send x-portkey-api-key or Authorization: Bearer")
    with tx(engine) as conn:
        row = db.key_by_hash(conn, hash_key(key))
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized("invalid or revoked API key")
        now = db.utcnow()
        last = db.aware(row["last_used_at"])
        if last is None or now - last > TOUCH_EVERY:
            db.touch_key(conn, row["id"], now)
    principal = Principal(
        workspace_id=row["workspace_id"], scopes=frozenset(Scope(s) for s in row["scopes"]), key_id=row["id"]
    )
    if not principal.allows(scope):
        raise Forbidden(f"this API key lacks the '{scope.value}' scope")
    return principal


def authenticate_internal(settings: Settings, token: str | None, workspace_id: str | None) -> Principal:
    """The control plane: the internal token, acting on the workspace it names.

    Raises: ServiceUnavailable (internal API not configured), Unauthorized, BadRequest (no workspace)."""
    if settings.internal_token is None:
        raise ServiceUnavailable("the internal API is disabled: TRAINYARD_INTERNAL_TOKEN is not set")
    expected = settings.internal_token.get_secret_value()
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("invalid internal token")
    if not workspace_id:
        raise BadRequest("internal calls name the workspace they act on: send the x-workspace-id header")
    return Principal(workspace_id=check_workspace(workspace_id), scopes=frozenset(Scope), internal=True)
