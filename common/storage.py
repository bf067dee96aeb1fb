"""One object-store interface over ``file://`` and ``s3://`` URIs.

Datasets, job specs, adapters and checkpoints are all addressed by URI, so the
gateway, the trainer services and the training program move bytes the same way
whether they run on a laptop (``file://`` under ``settings.storage_root``) or in
a cluster (``s3://`` on AWS, MinIO or moto).

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

import builtins
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from common.errors import (
    AccessDenied,
    BadRequest,
    ObjectNotFound,
    PayloadTooLarge,
    StorageError,
)
from common.settings import Settings, get_settings

if TYPE_CHECKING:
    from botocore.client import BaseClient

SCHEMES = ("file", "s3")
CHUNK_SIZE = 1024 * 1024
# S3 refuses multipart parts under 5 MiB (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
# Prefix of in-flight local temp files; list() hides them so readers never see partial writes.
TMP_PREFIX = ".tmp-trainyard-"
# Keys per DeleteObjects request (the S3 maximum).
DELETE_BATCH = 1000
_DENIED_CODES = frozenset({"AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


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


def _split_parts(parts: Iterable[str]) -> list[str]:
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
    _split_parts([uri.partition("://")[2]])


def _safe_endpoint(endpoint: str | None) -> str:
    """The endpoint without any ``user:password@`` part, fit for an error message."""
    if not endpoint:
        return "the default AWS S3 endpoint"
    split = urlsplit(endpoint)
    netloc = split.netloc.rpartition("@")[2]
    return urlunsplit((split.scheme, netloc, split.path, "", ""))


def _iter_chunks(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is not None:
        yield from iter(lambda: read(CHUNK_SIZE), b"")
    else:
        yield from source


def _limited(chunks: Iterator[bytes], max_bytes: int | None, uri: str) -> Iterator[bytes]:
    """Pass chunks through, raising PayloadTooLarge as soon as the total passes ``max_bytes``."""
    total = 0
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise PayloadTooLarge(f"upload to {uri} exceeds the limit of {max_bytes} bytes")
        yield bytes(chunk)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``path`` and rename it into place only on success.

    The rename is atomic on one filesystem, so readers see the old object or the
    new one, never a partial write, and a failed write leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; objects are read by other processes (training jobs).
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ObjectStore:
    """Dispatches on URI scheme: file:// (confined to settings.storage_root) and s3:// (boto3).

    Build one per process (e.g. in the app lifespan) and share it: the boto3
    client is created on first S3 use and is thread-safe.
    """

    def __init__(self, settings: Settings | None = None, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        self.settings = settings or get_settings()
        self.part_size = part_size
        self._client_obj: BaseClient | None = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ URIs

    def join(self, base_uri: str, *parts: str) -> str:
        """Join ``parts`` onto ``base_uri`` with ``/``.

        File URI parts are percent-encoded like ``Path.as_uri()`` so names with
        spaces or ``%`` round-trip through ``parse_uri``.

        Raises:
            BadRequest: unsupported base URI or a ``..`` segment in ``parts``.
        """
        scheme, _, _ = parse_uri(base_uri)
        segments = _split_parts(parts)
        if scheme == "file":
            segments = [quote(s) for s in segments]
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
        scheme, _, path = parse_uri(uri)
        if scheme != "file":
            raise BadRequest(f"{uri!r} is not a file:// URI")
        root = self.settings.storage_root.resolve()
        try:
            resolved = Path(path).resolve()
        except (ValueError, OSError) as e:
            raise BadRequest(f"invalid file path in {uri!r}") from e
        if resolved != root and root not in resolved.parents:
            raise BadRequest(f"path escapes the storage root: {uri!r}")
        return resolved

    def check(self, uri: str) -> str:
        """``uri`` as given when a job may use it: a supported scheme, no ``..`` (also encoded), and
        for ``file://`` a path inside the storage root. No I/O beyond resolving the path.

        Raises:
            BadRequest: what is wrong with it.
        """
        scheme, _, _ = parse_uri(uri)
        check_segments(uri)
        if scheme == "file":
            self.local_path(uri)
        return uri

    # ---------------------------------------------------------------- writes

    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` at ``uri``, replacing any existing object atomically."""
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            path = self.local_path(uri)
            with self._file_errors(uri, "write"), _atomic_file(path) as fh:
                fh.write(data)
            return
        extra = {"ContentType": content_type} if content_type else {}
        with self._s3_errors(uri, "put"):
            self._client().put_object(Bucket=bucket, Key=key, Body=data, **extra)

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
        scheme, bucket, key = parse_uri(uri)
        stream = _limited(_iter_chunks(chunks), max_bytes, uri)
        if scheme == "file":
            path = self.local_path(uri)
            total = 0
            with self._file_errors(uri, "write"), _atomic_file(path) as fh:
                for chunk in stream:
                    fh.write(chunk)
                    total += len(chunk)
            return total
        return self._s3_put_stream(uri, bucket, key, stream)

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
        with self.open(uri) as fh, self._read_errors(uri):
            return fh.read()

    @contextlib.contextmanager
    def _open(self, uri: str) -> Iterator[BinaryIO]:
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            path = self.local_path(uri)
            with self._file_errors(uri, "read"):
                fh = path.open("rb")
            with fh:
                yield fh
            return
        with self._s3_errors(uri, "get"):
            body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
        with contextlib.closing(body):
            yield body

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        """Streaming read: ``with store.open(uri) as fh: fh.read(n)``.

        Raises:
            ObjectNotFound: no object at ``uri``.
        """
        return self._open(uri)

    def download_file(self, uri: str, path: Path) -> None:
        """Copy an object to a local path (outside the storage root is fine), atomically."""
        path = Path(path)
        with (
            self.open(uri) as src,
            self._file_errors(str(path), "write"),
            _atomic_file(path) as dst,
            self._read_errors(uri),
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
            rel = self._relative(prefix_uri, info.uri)
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
        scheme, bucket, key = parse_uri(prefix_uri)
        infos = self._file_list(prefix_uri) if scheme == "file" else self._s3_list(prefix_uri, bucket, key)
        return sorted(infos, key=lambda info: info.uri)

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
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            path = self.local_path(uri)
            with self._file_errors(uri, "stat"):
                st = path.stat()
            if not path.is_file():
                raise ObjectNotFound(f"object not found: {uri}")
            return ObjectInfo(uri, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
        with self._s3_errors(uri, "head"):
            head = self._client().head_object(Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(head["ContentLength"]), head.get("LastModified"))

    # --------------------------------------------------------------- deletes

    def delete(self, uri: str) -> None:
        """Delete one object; deleting a missing object is not an error."""
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            path = self.local_path(uri)
            if path.is_dir():
                raise BadRequest(f"{uri!r} is a prefix, not an object; use delete_prefix")
            with self._file_errors(uri, "delete"):
                path.unlink(missing_ok=True)
            return
        with self._s3_errors(uri, "delete"):
            self._client().delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, prefix_uri: str) -> int:
        """Delete every object under ``prefix_uri``; return how many were deleted."""
        scheme, bucket, _ = parse_uri(prefix_uri)
        infos = self.list(prefix_uri)
        if scheme == "file":
            for info in infos:
                self.delete(info.uri)
            self._prune_empty_dirs(self.local_path(prefix_uri))
            return len(infos)
        keys = [parse_uri(info.uri)[2] for info in infos]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            with self._s3_errors(prefix_uri, "delete"):
                resp = self._client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := resp.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} object(s) under {prefix_uri}, "
                    f"e.g. s3://{bucket}/{first.get('Key')}: {first.get('Code')}"
                )
        return len(keys)

    # ------------------------------------------------------------- presigning

    def presign_get(self, uri: str, expires_seconds: int = 3600) -> str:
        """A URL that lets a client download ``uri`` directly from S3, bypassing the gateway."""
        bucket, key = self._s3_only(uri)
        with self._s3_errors(uri, "presign"):
            return str(
                self._client().generate_presigned_url(
                    "get_object",
                    Params={"Bucket": bucket, "Key": key},
                    ExpiresIn=expires_seconds,
                )
            )

    def presign_put(self, uri: str, expires_seconds: int = 3600, content_type: str | None = None) -> str:
        """A URL a client can PUT ``uri`` to; with ``content_type``, the client must send it."""
        bucket, key = self._s3_only(uri)
        params = {"Bucket": bucket, "Key": key}
        if content_type:
            params["ContentType"] = content_type
        with self._s3_errors(uri, "presign"):
            return str(self._client().generate_presigned_url("put_object", Params=params, ExpiresIn=expires_seconds))

    # ------------------------------------------------------------- internals

    @staticmethod
    def _relative(prefix_uri: str, uri: str) -> str:
        """``uri``'s path below ``prefix_uri`` (decoded, for file URIs)."""
        _, _, prefix = parse_uri(prefix_uri)
        _, _, path = parse_uri(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if not path.startswith(prefix):
            raise StorageError(f"listed object {uri!r} is not under {prefix_uri!r}")
        return path[len(prefix) :]

    def _file_list(self, prefix_uri: str) -> builtins.list[ObjectInfo]:
        root = self.settings.storage_root.resolve()
        top = self.local_path(prefix_uri)
        if not top.is_dir():
            return []
        infos = []
        # followlinks=False: a symlinked directory must not pull outside files into a listing.
        for dirpath, _, filenames in os.walk(top, followlinks=False):
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                real = path.resolve()
                if root not in real.parents or not real.is_file():
                    continue  # dangling link or symlink out of the root
                st = real.stat()
                infos.append(
                    ObjectInfo(
                        self.join(prefix_uri, path.relative_to(top).as_posix()),
                        st.st_size,
                        datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
        return infos

    def _prune_empty_dirs(self, top: Path) -> None:
        """Remove directories left empty under ``top`` (never the storage root itself)."""
        if not top.is_dir():
            return
        root = self.settings.storage_root.resolve()
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            path = Path(dirpath)
            if path != root:
                with contextlib.suppress(OSError):
                    path.rmdir()  # fails, harmlessly, if not empty

    @contextlib.contextmanager
    def _file_errors(self, uri: str, op: str) -> Iterator[None]:
        """Map OSError onto the common tree; a missing path only means 'no object' when reading."""
        try:
            yield
        except PermissionError as e:
            raise AccessDenied(f"permission denied: {uri}") from e
        except OSError as e:
            missing = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
            if op != "write" and isinstance(e, missing):
                raise ObjectNotFound(f"object not found: {uri}") from e
            raise StorageError(f"{op} failed for {uri}: {e.strerror or type(e).__name__}") from e

    def _read_errors(self, uri: str) -> AbstractContextManager[None]:
        """Errors raised while streaming a body (S3 read timeouts, dropped connections)."""
        if parse_uri(uri)[0] == "s3":
            return self._s3_errors(uri, "read")
        return self._file_errors(uri, "read")

    def _s3_only(self, uri: str) -> tuple[str, str]:
        scheme, bucket, key = parse_uri(uri)
        if scheme != "s3":
            raise BadRequest("presigned URLs need s3:// storage")
        return bucket, key

    def _client(self) -> BaseClient:
        """The boto3 S3 client, built once; boto3 is imported here so API start-up stays fast."""
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                self._client_obj = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.settings.s3_endpoint_url or None,
                    region_name=self.settings.s3_region,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10,
                        read_timeout=60,
                    ),
                )
            return self._client_obj

    @contextlib.contextmanager
    def _s3_errors(self, uri: str, op: str) -> Iterator[None]:
        """Map botocore errors onto the common tree, keeping the error code, never the message."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except ClientError as e:
            raise self._map_client_error(e, uri, op) from e
        except (EndpointConnectionError, BotoConnectionError) as e:
            endpoint = _safe_endpoint(self.settings.s3_endpoint_url)
            raise StorageError(f"cannot reach S3 endpoint {endpoint} ({op} {uri})") from e
        except NoCredentialsError as e:
            raise StorageError(f"no S3 credentials configured ({op} {uri})") from e
        except BotoCoreError as e:
            raise StorageError(f"S3 {op} failed for {uri}: {type(e).__name__}") from e

    @staticmethod
    def _map_client_error(e: Any, uri: str, op: str) -> StorageError:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            bucket = error.get("BucketName") or parse_uri(uri)[1]
            return ObjectNotFound(f"bucket not found: {bucket} ({uri})")
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return ObjectNotFound(f"object not found: {uri}")
        if code in _DENIED_CODES or status == 403:
            return AccessDenied(f"access denied: {uri} ({code or status})")
        return StorageError(f"S3 {op} failed for {uri}: {code or status}")

    def _s3_put_stream(self, uri: str, bucket: str, key: str, stream: Iterator[bytes]) -> int:
        """Multipart upload holding at most one part in memory.

        Small streams (under one part) go in a single PutObject. The multipart
        upload is aborted on any error, so S3 never completes a partial object.
        """
        client = self._client()
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in stream:
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        with self._s3_errors(uri, "put"):
                            upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    parts.append(self._upload_part(uri, bucket, key, upload_id, len(parts) + 1, part))
            if upload_id is None:
                with self._s3_errors(uri, "put"):
                    client.put_object(Bucket=bucket, Key=key, Body=bytes(buffer))
                return total
            if buffer:
                parts.append(self._upload_part(uri, bucket, key, upload_id, len(parts) + 1, bytes(buffer)))
            with self._s3_errors(uri, "put"):
                client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            return total
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _upload_part(self, uri: str, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        with self._s3_errors(uri, "put"):
            resp = self._client().upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _s3_list(self, prefix_uri: str, bucket: str, key: str) -> builtins.list[ObjectInfo]:
        prefix = key if not key or key.endswith("/") else key + "/"
        infos = []
        with self._s3_errors(prefix_uri, "list"):
            paginator = self._client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    infos.append(
                        ObjectInfo(
                            f"s3://{bucket}/{obj['Key']}",
                            int(obj["Size"]),
                            obj.get("LastModified"),
                        )
                    )
        return infos
