"""What every storage backend shares: the URI grammar, the object record and the backend protocol.

``ObjectStore`` (``common.storage.store``) parses a URI once, picks the backend for its scheme and
hands it the URI; a backend (``local.LocalBackend``, ``s3.S3Backend``) only moves bytes and maps
its library's errors onto the ``common.errors`` tree.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Literal, Protocol
from urllib.parse import unquote

from common.errors import BadRequest, PayloadTooLarge

SCHEMES = ("file", "s3")
CHUNK_SIZE = 1024 * 1024
PresignMethod = Literal["get", "put"]


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    last_modified: datetime | None = None


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a storage URI into ``(scheme, bucket_or_empty, key_or_path)``.

    ``file`` URIs yield the percent-decoded absolute path (so ``%2e%2e`` is seen
    as ``..`` and confined like any other path); ``s3`` keys are literal, as in
    the AWS CLI.

    Raises:
        BadRequest: empty URI, unsupported scheme, missing bucket, or a
            ``file`` URI that is not absolute.
    """
    if not uri:
        raise BadRequest("empty storage URI")
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise BadRequest(f"unsupported storage URI {uri!r}: expected s3://bucket/key or file:///absolute/path")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise BadRequest(f"storage URI {uri!r} names no bucket")
        return scheme, bucket, key
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost") or not slash:
        raise BadRequest(f"file URI {uri!r} must be absolute: file:///absolute/path")
    return scheme, "", unquote("/" + path)


def split_parts(parts: Iterable[str]) -> list[str]:
    """Segments of ``parts``; ``..`` is refused so a joined URI never climbs out of its base."""
    segments: list[str] = []
    for part in parts:
        for segment in part.split("/"):
            if unquote(segment) == "..":
                raise BadRequest(f"'..' is not allowed in a storage path: {part!r}")
            if segment and segment != ".":
                segments.append(segment)
    return segments


def check_segments(uri: str) -> None:
    """Refuse a URI with a ``..`` segment, also percent-encoded (``%2e%2e``).

    Raises:
        BadRequest: naming the URI.
    """
    split_parts([uri.partition("://")[2]])


def iter_chunks(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is not None:
        yield from iter(lambda: read(CHUNK_SIZE), b"")
    else:
        yield from source


def limited(chunks: Iterator[bytes], max_bytes: int | None, uri: str) -> Iterator[bytes]:
    """Pass chunks through, raising PayloadTooLarge as soon as the total passes ``max_bytes``."""
    total = 0
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise PayloadTooLarge(f"upload to {uri} exceeds the limit of {max_bytes} bytes")
        yield bytes(chunk)


class Backend(Protocol):
    """One scheme's objects. Every ``uri`` given is of that scheme; listings need not be sorted.

    Writes are all-or-nothing: a failed or refused write leaves no partial object and the
    previous one (if any) in place.
    """

    def encode(self, segment: str) -> str:
        """A path segment as it is written into a URI of this scheme."""
        ...

    def check(self, uri: str) -> None:
        """Raise BadRequest if a job may not use ``uri`` (no I/O beyond resolving a path)."""
        ...

    def put_bytes(self, uri: str, data: bytes, content_type: str | None) -> None: ...

    def put_stream(self, uri: str, chunks: Iterator[bytes]) -> int:
        """Store ``chunks`` (already limited) in bounded memory; return the bytes written."""
        ...

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]: ...

    def read_errors(self, uri: str) -> AbstractContextManager[None]:
        """Map errors raised while reading an opened body."""
        ...

    def stat(self, uri: str) -> ObjectInfo: ...

    def list(self, prefix_uri: str) -> list[ObjectInfo]: ...

    def delete(self, uri: str) -> None: ...

    def delete_prefix(self, prefix_uri: str, infos: builtins.list[ObjectInfo]) -> int:
        """Delete ``infos`` (the listing of ``prefix_uri``); return how many were deleted."""
        ...

    def presign(self, uri: str, method: PresignMethod, expires_seconds: int, content_type: str | None) -> str:
        """A URL that lets a client ``get`` or ``put`` ``uri`` directly, bypassing the gateway."""
        ...
