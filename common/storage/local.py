"""``file://`` objects: files under one root directory, written atomically.

Every path is resolved (``..``, symlinks) and must stay inside the root; anything else is
refused with ``BadRequest``. Writes go to a temp file beside the target and are
``os.replace``-d into place, so readers see the old object or the new one, never part of one.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from common.errors import AccessDenied, BadRequest, ObjectNotFound, StorageError
from common.storage.base import ObjectInfo, PresignMethod, parse_uri

# Prefix of in-flight temp files; list() hides them so readers never see partial writes.
TMP_PREFIX = ".tmp-trainyard-"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
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


@contextlib.contextmanager
def file_errors(uri: str, op: str) -> Iterator[None]:
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


class LocalBackend:
    """Objects as files under ``root`` (resolved on each use, so a root made later still counts)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, uri: str) -> Path:
        """The absolute path a ``file://`` URI names, confined to the root.

        Raises:
            BadRequest: not a ``file://`` URI, or the path (after ``..`` and
                symlinks) escapes the storage root.
        """
        scheme, _, path = parse_uri(uri)
        if scheme != "file":
            raise BadRequest(f"{uri!r} is not a file:// URI")
        root = self.root.resolve()
        try:
            resolved = Path(path).resolve()
        except (ValueError, OSError) as e:
            raise BadRequest(f"invalid file path in {uri!r}") from e
        if resolved != root and root not in resolved.parents:
            raise BadRequest(f"path escapes the storage root: {uri!r}")
        return resolved

    def encode(self, segment: str) -> str:
        # Like Path.as_uri(), so names with spaces or '%' round-trip through parse_uri.
        return quote(segment)

    def check(self, uri: str) -> None:
        self.path(uri)

    # ---------------------------------------------------------------- writes

    def put_bytes(self, uri: str, data: bytes, content_type: str | None) -> None:
        path = self.path(uri)
        with file_errors(uri, "write"), atomic_file(path) as fh:
            fh.write(data)

    def put_stream(self, uri: str, chunks: Iterator[bytes]) -> int:
        path = self.path(uri)
        total = 0
        with file_errors(uri, "write"), atomic_file(path) as fh:
            for chunk in chunks:
                fh.write(chunk)
                total += len(chunk)
        return total

    # ----------------------------------------------------------------- reads

    @contextlib.contextmanager
    def _open(self, uri: str) -> Iterator[BinaryIO]:
        path = self.path(uri)
        with file_errors(uri, "read"):
            fh = path.open("rb")
        with fh:
            yield fh

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        return self._open(uri)

    def read_errors(self, uri: str) -> AbstractContextManager[None]:
        return file_errors(uri, "read")

    def stat(self, uri: str) -> ObjectInfo:
        path = self.path(uri)
        with file_errors(uri, "stat"):
            st = path.stat()
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {uri}")
        return ObjectInfo(uri, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        root = self.root.resolve()
        top = self.path(prefix_uri)
        if not top.is_dir():
            return []
        infos = []
        base = prefix_uri.rstrip("/")
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
                rel = "/".join(self.encode(s) for s in path.relative_to(top).parts)
                infos.append(ObjectInfo(f"{base}/{rel}", st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return infos

    # --------------------------------------------------------------- deletes

    def delete(self, uri: str) -> None:
        path = self.path(uri)
        if path.is_dir():
            raise BadRequest(f"{uri!r} is a prefix, not an object; use delete_prefix")
        with file_errors(uri, "delete"):
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix_uri: str, infos: builtins.list[ObjectInfo]) -> int:
        for info in infos:
            self.delete(info.uri)
        self._prune_empty_dirs(self.path(prefix_uri))
        return len(infos)

    def _prune_empty_dirs(self, top: Path) -> None:
        """Remove directories left empty under ``top`` (never the storage root itself)."""
        if not top.is_dir():
            return
        root = self.root.resolve()
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            path = Path(dirpath)
            if path != root:
                with contextlib.suppress(OSError):
                    path.rmdir()  # fails, harmlessly, if not empty

    def presign(self, uri: str, method: PresignMethod, expires_seconds: int, content_type: str | None) -> str:
        raise BadRequest("presigned URLs need s3:// storage")
