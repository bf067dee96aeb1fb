"""``ObjectStore``: one object-store interface over ``file://`` and ``s3://`` URIs.

Datasets, job specs, adapters and checkpoints are all addressed by URI, so the
gateway, the trainer services and the training program move bytes the same way
whether they run on a laptop (``file://`` under ``settings.storage_root``) or in
a cluster (``s3://`` on AWS, MinIO or moto). The store parses each URI once and
hands it to the backend of its scheme (``local.LocalBackend``, ``s3.S3Backend``);
what is the same for both (joining, streaming limits, copying to disk, mirroring a
prefix) lives here.

Guarantees both schemes share, because callers rely on them:

* ``file://`` paths are confined to ``storage_root`` after resolving ``..`` and
  symlinks; anything else is refused with ``BadRequest``.
* Writes are all-or-nothing: local writes go to a temp file in the target
  directory and are ``os.replace``-d into place; S3 streams use multipart
  uploads that are aborted on failure. A refused or failed upload leaves no
  partial object and never clobbers an existing one.
* Prefixes act like directories: ``list("s3://b/p")`` covers ``p/...``, not
  ``pq``, exactly as a local directory would.
* Library errors become the ``common.errors`` tree (``ObjectNotFound``,
  ``AccessDenied``, ``StorageError``), raised ``from`` the original and naming
  the URI or endpoint, never the credentials.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from common.errors import BadRequest, ObjectNotFound, StorageError
from common.settings import Settings, get_settings
from common.storage.base import (
    CHUNK_SIZE,
    Backend,
    ObjectInfo,
    check_segments,
    iter_chunks,
    limited,
    parse_uri,
    split_parts,
)
from common.storage.local import LocalBackend, atomic_file, file_errors
from common.storage.s3 import DEFAULT_PART_SIZE, S3Backend

log = logging.getLogger(__name__)


class ObjectStore:
    """Dispatches on URI scheme: file:// (confined to settings.storage_root) and s3:// (boto3).

    Build one per process (e.g. in the app lifespan) and share it: the boto3
    client is created on first S3 use and is thread-safe.
    """

    def __init__(self, settings: Settings | None = None, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        self.settings = settings or get_settings()
        self.local = LocalBackend(self.settings.storage_root)
        self.s3 = S3Backend(self.settings.s3_endpoint_url, self.settings.s3_region, part_size=part_size)
        self._backends: dict[str, Backend] = {"file": self.local, "s3": self.s3}

    @property
    def part_size(self) -> int:
        return self.s3.part_size

    def _backend(self, uri: str) -> Backend:
        """The backend of ``uri``'s scheme.

        Raises:
            BadRequest: the URI does not parse (see ``parse_uri``).
        """
        return self._backends[parse_uri(uri)[0]]

    # ------------------------------------------------------------------ URIs

    def join(self, base_uri: str, *parts: str) -> str:
        """Join ``parts`` onto ``base_uri`` with ``/``.

        File URI parts are percent-encoded like ``Path.as_uri()`` so names with
        spaces or ``%`` round-trip through ``parse_uri``.

        Raises:
            BadRequest: unsupported base URI or a ``..`` segment in ``parts``.
        """
        backend = self._backend(base_uri)
        segments = [backend.encode(s) for s in split_parts(parts)]
        return "/".join([base_uri.rstrip("/"), *segments]) if segments else base_uri

    def default_uri(self, *parts: str) -> str:
        """URI for a new object under the configured storage location."""
        return self.join(self.settings.object_base(), *parts)

    def local_path(self, uri: str) -> Path:
        """The absolute path a ``file://`` URI names, confined to ``storage_root``.

        Raises:
            BadRequest: not a ``file://`` URI, or the path (after ``..`` and
                symlinks) escapes the storage root.
        """
        return self.local.path(uri)

    def check(self, uri: str) -> str:
        """``uri`` as given when a job may use it: a supported scheme, no ``..`` (also encoded), and
        for ``file://`` a path inside the storage root. No I/O beyond resolving the path.

        Raises:
            BadRequest: what is wrong with it.
        """
        backend = self._backend(uri)
        check_segments(uri)
        backend.check(uri)
        return uri

    def check_location(self) -> None:
        """At start-up: the storage location new objects go to exists, so a missing bucket stops the
        process with its name instead of failing the first upload. Only a definite "no such bucket"
        stops it; an endpoint that does not answer yet (or forbids HeadBucket) is logged and passed.

        Raises:
            ObjectNotFound: TRAINYARD_STORAGE_URL names a bucket that does not exist.
        """
        base = self.settings.object_base()
        if parse_uri(base)[0] != "s3":
            return
        try:
            self.s3.check_bucket(base)
        except ObjectNotFound as e:
            raise ObjectNotFound(f"TRAINYARD_STORAGE_URL={base}: {e.detail}; create the bucket or fix the setting") from e
        except StorageError as e:
            log.warning("cannot check the storage bucket at start (%s); uploads will fail until it answers", e.detail)

    # ---------------------------------------------------------------- writes

    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` at ``uri``, replacing any existing object atomically."""
        self._backend(uri).put_bytes(uri, data, content_type)

    def put_stream(
        self,
        uri: str,
        chunks: Iterable[bytes] | BinaryIO,
        *,
        max_bytes: int | None = None,
    ) -> int:
        """Stream an upload to ``uri`` in bounded memory; return the bytes written.

        Raises:
            PayloadTooLarge: the stream passed ``max_bytes``; nothing is stored
                and an existing object at ``uri`` is untouched.
        """
        backend = self._backend(uri)
        return backend.put_stream(uri, limited(iter_chunks(chunks), max_bytes, uri))

    def put_file(self, uri: str, path: Path) -> None:
        """Upload a local file; streams, so large checkpoints never sit in memory."""
        try:
            fh = Path(path).open("rb")  # noqa: SIM115 - closed below; only open() errors are mapped here
        except OSError as e:
            raise StorageError(f"cannot read local file {str(path)!r}: {e.strerror}") from e
        with fh:
            self.put_stream(uri, fh)

    def upload_dir(self, src: Path, prefix_uri: str) -> list[str]:
        """Upload every file under ``src``, keeping its relative layout; return the URIs."""
        src = Path(src)
        if not src.is_dir():
            raise BadRequest(f"not a directory: {str(src)!r}")
        uris = []
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            uri = self.join(prefix_uri, path.relative_to(src).as_posix())
            self.put_file(uri, path)
            uris.append(uri)
        return uris

    # ----------------------------------------------------------------- reads

    def get_bytes(self, uri: str) -> bytes:
        """Read a whole object; use ``open`` for anything large."""
        backend = self._backend(uri)
        with backend.open(uri) as fh, backend.read_errors(uri):
            return fh.read()

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        """Streaming read: ``with store.open(uri) as fh: fh.read(n)``.

        Raises:
            ObjectNotFound: no object at ``uri``.
        """
        return self._backend(uri).open(uri)

    def download_file(self, uri: str, path: Path) -> None:
        """Copy an object to a local path (outside the storage root is fine), atomically."""
        backend = self._backend(uri)
        path = Path(path)
        with (
            backend.open(uri) as src,
            file_errors(str(path), "write"),
            atomic_file(path) as dst,
            backend.read_errors(uri),
        ):
            shutil.copyfileobj(src, dst, CHUNK_SIZE)

    def download_prefix(self, prefix_uri: str, dest: Path) -> list[Path]:
        """Mirror every object under ``prefix_uri`` into ``dest``; return the local paths.

        Raises:
            BadRequest: an object key would land outside ``dest`` (a key with
                ``..`` in S3 cannot be allowed to write anywhere on disk).
        """
        dest = Path(dest).resolve()
        paths = []
        for info in self.list(prefix_uri):
            rel = _relative(prefix_uri, info.uri)
            if not rel or rel.endswith("/"):
                continue  # S3 "folder" marker objects have no file content
            target = (dest / rel).resolve()
            if dest not in target.parents:
                raise BadRequest(f"object {info.uri!r} would be written outside {str(dest)!r}")
            self.download_file(info.uri, target)
            paths.append(target)
        return paths

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object under ``prefix_uri`` (recursive), sorted by URI; [] if none."""
        return sorted(self._backend(prefix_uri).list(prefix_uri), key=lambda info: info.uri)

    def exists(self, uri: str) -> bool:
        try:
            self.stat(uri)
        except ObjectNotFound:
            return False
        return True

    def stat(self, uri: str) -> ObjectInfo:
        """Size and modification time of one object.

        Raises:
            ObjectNotFound: no object at ``uri`` (a directory is not an object).
        """
        return self._backend(uri).stat(uri)

    # --------------------------------------------------------------- deletes

    def delete(self, uri: str) -> None:
        """Delete one object; deleting a missing object is not an error."""
        self._backend(uri).delete(uri)

    def delete_prefix(self, prefix_uri: str) -> int:
        """Delete every object under ``prefix_uri``; return how many were deleted."""
        backend = self._backend(prefix_uri)
        return backend.delete_prefix(prefix_uri, self.list(prefix_uri))

    # ------------------------------------------------------------- presigning

    def presign_get(self, uri: str, expires_seconds: int = 3600) -> str:
        """A URL that lets a client download ``uri`` directly from S3, bypassing the gateway.

        Raises:
            BadRequest: ``uri`` is not an ``s3://`` URI.
        """
        return self._backend(uri).presign(uri, "get", expires_seconds, None)

    def presign_put(self, uri: str, expires_seconds: int = 3600, content_type: str | None = None) -> str:
        """A URL a client can PUT ``uri`` to; with ``content_type``, the client must send it.

        Raises:
            BadRequest: ``uri`` is not an ``s3://`` URI.
        """
        return self._backend(uri).presign(uri, "put", expires_seconds, content_type)


def _relative(prefix_uri: str, uri: str) -> str:
    """``uri``'s path below ``prefix_uri`` (decoded, for file URIs)."""
    _, _, prefix = parse_uri(prefix_uri)
    _, _, path = parse_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if not path.startswith(prefix):
        raise StorageError(f"listed object {uri!r} is not under {prefix_uri!r}")
    return path[len(prefix) :]

