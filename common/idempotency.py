"""``Idempotency-Key`` on the POSTs that create or start something, with Stripe's semantics.

    first request            claims (scope, key) with an INSERT on a unique key: replicas agree
    replay, same request     the first answer (status, body, headers), nothing done again
    replay, other request    422 (the digest of method + path + body differs)
    replay while in flight   409
    after the TTL            the key acts again (settings.idempotency_ttl_seconds)

The scope is the caller (a workspace on the gateway, the service on a trainer service), so one
tenant's key never returns another's answer. A 2xx or a 4xx answer is stored, except 409 and 429,
which say "try again"; a 5xx or a crash releases the claim so a retry can act. A claim left in flight
by a process that died is taken over after ``STALE_CLAIM``.

Three pieces: ``IdempotencyStore`` (the table; claim, complete, release), the route dependency
``idempotent(scope)`` that claims, and the ASGI middleware ``install`` adds, which records the answer
before the client receives its last byte (so a replay never finds the key still in flight).
"""


import contextlib
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import Conflict, Unprocessable
from common.statuslog import utcnow

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
STALE_CLAIM = timedelta(minutes=10)  # longer than any of these requests takes
_SLOT = "trainyard.idempotency"  # the ASGI scope entry the dependency and the middleware share
_UNSTORED_HEADERS = {"content-length", "date", "server", "transfer-encoding", "connection"}

metadata = MetaData()

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(128), primary_key=True),  # the primary key is the claim: one row per (scope, key)
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("claim", String(32), nullable=False),  # the current holder; complete/release touch only their own
    Column("request_digest", String(64), nullable=False),
    Column("status_code", Integer),  # NULL while the first request is in flight
    Column("headers", JSON),
    Column("body", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


def init_table(engine: Engine) -> None:
    """Create the table; the gateway and the trainer services both call this and may share a database."""
    try:
        metadata.create_all(engine)
    except DBAPIError:  # another process created it at the same moment
        if not inspect(engine).has_table(idempotency_keys.name):
            raise


def storable(status: int) -> bool:
    """Answers a replay returns: success and the client's own errors, not "try again" (409, 429) or 5xx."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in (409, 429))


def request_digest(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    """What "the same request" means: method, path, query and body. A JSON body is compared by value
    (key order, whitespace), a multipart body without its random boundary (a client's retry draws a new one)."""
    if content_type.startswith("application/json"):
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    elif content_type.startswith("multipart/form-data"):
        boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"')
        if boundary:
            body = body.replace(b"--" + boundary.encode("latin-1"), b"--")
    digest = hashlib.sha256(f"{method} {path}?{query}\n".encode())
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True)
class Claim:
    scope: str
    key: str
    token: str


@dataclass(frozen=True)
class Stored:
    status_code: int
    headers: list[list[str]]
    body: bytes


class IdempotencyStore:
    """The table's operations; one per process, on ``app.state.idempotency``."""

    def __init__(self, engine: Engine, ttl_seconds: int) -> None:
        self.engine, self.ttl = engine, timedelta(seconds=ttl_seconds)

    def claim(self, scope: str, key: str, digest: str) -> Claim | Stored:
        """Claim the key for this request, or return the answer stored for it.

        Raises: Conflict while another request holds the key; Unprocessable when the key was
        used for a different request."""
        t = idempotency_keys.c
        for _ in range(3):  # a row deleted between the INSERT and the SELECT: claim again
            now = utcnow()
            token = secrets.token_hex(16)
            values: dict[str, Any] = {
                "claim": token, "request_digest": digest, "status_code": None, "headers": None, "body": None,
                "created_at": now, "expires_at": now + self.ttl,
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(idempotency_keys).values(scope=scope, key=key, **values))
                self._purge()
                return Claim(scope, key, token)
            except IntegrityError:
                pass
            with self.engine.begin() as conn:
                # an expired key, or a claim whose process died, goes to exactly one caller
                taken = conn.execute(
                    update(idempotency_keys)
                    .where(t.scope == scope, t.key == key,
                           or_(t.expires_at < now, and_(t.status_code.is_(None), t.created_at < now - STALE_CLAIM)))
                    .values(**values)
                ).rowcount
                if taken == 1:
                    return Claim(scope, key, token)
                row = conn.execute(
                    select(t.request_digest, t.status_code, t.headers, t.body).where(t.scope == scope, t.key == key)
                ).mappings().first()
            if row is None:
                continue
            if row["status_code"] is None:
                raise Conflict(f"a request with this {HEADER} is still in progress; retry when it has finished")
            if row["request_digest"] != digest:
                raise Unprocessable(f"this {HEADER} was already used for a different request; use a new key",
                                    error="idempotency_key_reused")
            return Stored(row["status_code"], row["headers"] or [], bytes(row["body"] or b""))
        raise Conflict(f"this {HEADER} is being claimed by another request; retry")

    def complete(self, claim: Claim, status: int, headers: list[list[str]], body: bytes) -> None:
        t = idempotency_keys.c
        with self.engine.begin() as conn:
            conn.execute(
                update(idempotency_keys)
                .where(t.scope == claim.scope, t.key == claim.key, t.claim == claim.token)
                .values(status_code=status, headers=headers, body=body)
            )

    def release(self, claim: Claim) -> None:
        """Forget the claim: the request failed in a way a retry may fix, so the retry acts."""
        t = idempotency_keys.c
        with self.engine.begin() as conn:
            conn.execute(
                delete(idempotency_keys).where(t.scope == claim.scope, t.key == claim.key, t.claim == claim.token)
            )

    def _purge(self) -> None:
        """Drop expired keys (indexed on expires_at), so the table holds at most a TTL's worth."""
        with self.engine.begin() as conn:
            conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at < utcnow()))


@dataclass
class _Slot:
    """Per request: the claim the dependency made, for the middleware to settle."""

    claim: Claim | None = None
    chunks: list[bytes] = field(default_factory=list)


class Replay(Exception):
    """Raised by the dependency to answer with the stored response instead of running the route."""

    def __init__(self, stored: Stored) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER, min_length=1, max_length=MAX_KEY_LENGTH,
        description="A unique key (e.g. a UUID) that makes retrying this request safe: a replay with the same "
        "key and body returns the first response without acting again (header Idempotent-Replayed: true); "
        "the same key with another body is 422, a replay while the first is still running 409. "
        "Keys are kept per caller for TRAINYARD_IDEMPOTENCY_TTL_SECONDS (24 h).",
    ),
]


def idempotent(scope: Callable[..., str]) -> Callable[..., Awaitable[None]]:
    """A route dependency honouring ``Idempotency-Key``; ``scope`` is a dependency naming the caller
    (it runs after authentication, so keys never cross tenants)."""

    async def dependency(
        request: Request, caller: Annotated[str, Depends(scope)], idempotency_key: KeyHeader = None
    ) -> None:
        if idempotency_key is None:
            return
        slot = request.scope.get(_SLOT)
        if not isinstance(slot, _Slot):
            raise RuntimeError("common.idempotency.install() was not applied to this app")
        body = await request.body()
        digest = request_digest(request.method, request.url.path, request.url.query,
                                request.headers.get("content-type", ""), body)
        store: IdempotencyStore = request.app.state.idempotency
        result = await run_in_threadpool(store.claim, caller, idempotency_key, digest)
        if isinstance(result, Stored):
            raise Replay(result)
        slot.claim = result

    return dependency


class _Recorder:
    """Stores (or releases) a claimed request's answer before its last byte goes to the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        slot = _Slot()
        scope[_SLOT] = slot
        start: dict[str, Any] = {}

        async def recording_send(message: Message) -> None:
            claim = slot.claim
            if claim is not None:
                if message["type"] == "http.response.start":
                    start.update(message)
                elif message["type"] == "http.response.body":
                    slot.chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        slot.claim = None
                        await self._settle(scope, claim, start, b"".join(slot.chunks))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except BaseException:
            if slot.claim is not None:
                await run_in_threadpool(scope["app"].state.idempotency.release, slot.claim)
            raise
        if slot.claim is not None:  # the client went away before the answer was complete
            await run_in_threadpool(scope["app"].state.idempotency.release, slot.claim)

    @staticmethod
    async def _settle(scope: Scope, claim: Claim, start: dict[str, Any], body: bytes) -> None:
        store: IdempotencyStore = scope["app"].state.idempotency
        status = int(start.get("status", 500))
        if not storable(status):
            await run_in_threadpool(store.release, claim)
            return
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in start.get("headers", [])
                   if k.decode("latin-1").lower() not in _UNSTORED_HEADERS]
        await run_in_threadpool(store.complete, claim, status, headers, body)


def install(app: FastAPI) -> None:
    """Make ``idempotent(...)`` work on ``app``: the recording middleware and the replay handler.
    The app's lifespan puts an ``IdempotencyStore`` on ``app.state.idempotency``."""

    async def on_replay(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Replay)
        stored = exc.stored
        response = Response(content=stored.body, status_code=stored.status_code)
        response.raw_headers = [
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers),
            *((k, v) for k, v in response.raw_headers if k == b"content-length"),
            (REPLAYED_HEADER.lower().encode(), b"true"),
        ]
        return response

    app.add_middleware(_Recorder)
    app.add_exception_handler(Replay, on_replay)
