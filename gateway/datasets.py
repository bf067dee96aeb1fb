"""Dataset operations behind /v1/datasets and /v1/dataservice/datasets.

A dataset is a name, a type and, once uploaded, one JSONL object in storage. Its object lives at
``users/<workspace>/projects/<project>/ingestion/<dataset id>-<file name>.jsonl`` under the storage
base; a user may also attach any object of their own under ``users/<workspace>/``. Uploads go to a
signed URL (S3's presigned PUT, or the gateway's HMAC-signed ``/v1/uploads``), or through the
multipart ``POST /v1/datasets/upload``; both stream to storage with a size limit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote

from sqlalchemy.engine import Connection, RowMapping

from common.db import tx
from common.errors import BadRequest, Conflict, NotFound, ObjectNotFound, PayloadTooLarge, Unprocessable
from common.schemas import (
    FINETUNE_ACTIVE,
    DatasetCreate,
    DatasetCreated,
    DatasetPublic,
    DatasetStatus,
    FinetuneStatus,
    ValidationReport,
)
from common.storage.base import iter_chunks
from gateway import db, modelrefs, signing
from gateway.auth import Principal
from gateway.context import Gateway

log = logging.getLogger("trainyard.gateway.datasets")

# Finetunes in these states are reading or may read a dataset's file: it can be neither replaced nor deleted.
IN_USE = FINETUNE_ACTIVE | {FinetuneStatus.validation_in_progress}


def project_prefix(workspace_id: str, project_id: str) -> str:
    return f"users/{workspace_id}/projects/{project_id}"


def file_stem(name: str) -> str:
    """A storage-safe version of a user's file name, without its extension."""
    base = PurePosixPath(name.replace("\\", "/")).name
    for ext in (".jsonl", ".json", ".txt"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip(".-")[:80] or "data"


def _signed_url(gw: Gateway, dataset_id: str, key: str, base_url: str) -> tuple[str, datetime]:
    ttl = gw.settings.upload_url_ttl_seconds
    if gw.uses_s3:
        url = gw.store.presign_put(gw.store.default_uri(key), expires_seconds=ttl)
        expires = int(datetime.now(UTC).timestamp()) + ttl
    else:
        base = gw.settings.gateway_public_url or base_url
        url, expires = signing.upload_url(base, gw.upload_secret, dataset_id, key, ttl)
    return url, datetime.fromtimestamp(expires, UTC)


def create(gw: Gateway, who: Principal, body: DatasetCreate, base_url: str) -> DatasetCreated:
    """A dataset awaiting its file, and a signed URL to PUT the file to."""
    dataset_id = f"ds-{uuid.uuid4().hex[:16]}"
    key = f"{project_prefix(who.workspace_id, body.project_id)}/ingestion/{dataset_id}-{file_stem(body.name)}.jsonl"
    url, expires_at = _signed_url(gw, dataset_id, key, base_url)
    with tx(gw.engine) as conn:
        if body.model is not None:
            modelrefs.resolve(conn, gw.settings, body.model, who.workspace_id)
        db.insert_dataset(
            conn,
            {
                "id": dataset_id, "workspace_id": who.workspace_id, "project_id": body.project_id, "name": body.name,
                "type": body.type.value, "provider": body.provider.value, "model": body.model,
                "status": DatasetStatus.awaiting_upload.value, "target_key": key,
            },
        )
    return DatasetCreated(id=dataset_id, signed_url=url, s3_path=key, expires_at=expires_at)


def new_signed_url(gw: Gateway, who: Principal, dataset_id: str, base_url: str) -> DatasetCreated:
    """A fresh upload URL for an existing dataset (the first one expired)."""
    with tx(gw.engine) as conn:
        row = db.get_dataset(conn, dataset_id, who.workspace_id)
    url, expires_at = _signed_url(gw, dataset_id, row["target_key"], base_url)
    return DatasetCreated(id=dataset_id, signed_url=url, s3_path=row["target_key"], expires_at=expires_at)


def get(gw: Gateway, who: Principal, dataset_id: str) -> DatasetPublic:
    with tx(gw.engine) as conn:
        return db.dataset_public(db.get_dataset(conn, dataset_id, who.workspace_id))


def list_(gw: Gateway, who: Principal, *, limit: int, offset: int) -> tuple[list[DatasetPublic], int]:
    with tx(gw.engine) as conn:
        rows, count = db.list_datasets(conn, who.workspace_id, limit=limit, offset=offset)
    return [db.dataset_public(r) for r in rows], count


def _key_of(gw: Gateway, workspace_id: str, s3_path: str) -> str:
    """The object key (relative to the storage base) that ``s3_path`` names, if the workspace owns it.

    Raises: BadRequest (outside the storage base or the workspace's prefix, or a '..' segment)."""
    path = s3_path.strip()
    if "://" in path:
        base = gw.settings.object_base().rstrip("/") + "/"
        if not path.startswith(base):
            raise BadRequest(f"s3_path must lie under the storage base {base}")
        path = path[len(base) :]
        if base.startswith("file://"):
            path = unquote(path)
    bucket_prefix = _s3_key_prefix(gw)
    if bucket_prefix and path.strip("/").startswith(f"{bucket_prefix}/users/"):
        path = path.strip("/")[len(bucket_prefix) + 1 :]  # the bucket's own key, as S3 consoles show it
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BadRequest("s3_path must not contain '..' segments")
    key = "/".join(parts)
    if not key.startswith(f"users/{workspace_id}/") or len(parts) < 3:
        raise BadRequest(f"s3_path must be an object under users/{workspace_id}/ (this workspace's prefix)")
    return key


def _s3_key_prefix(gw: Gateway) -> str:
    """The key prefix of an s3://bucket/prefix storage base ('' for file:// or a bare bucket)."""
    base = gw.settings.object_base()
    if not base.startswith("s3://"):
        return ""
    return base[len("s3://") :].partition("/")[2].strip("/")


def _check_replaceable(conn: Connection, dataset_id: str) -> None:
    users = db.finetunes_using(conn, dataset_id, IN_USE)
    if users:
        names = ", ".join(f"{u['id']} ({u['status']})" for u in users)
        raise Conflict(f"dataset '{dataset_id}' is in use by finetune {names}; wait for it or cancel it first")


def _record_file(conn: Connection, dataset_id: str, key: str, uri: str, size: int) -> None:
    """Point the dataset at its (new) file; finetunes validated against the old file must validate again."""
    _check_replaceable(conn, dataset_id)
    db.update_dataset(
        conn, dataset_id, s3_path=key, uri=uri, size_bytes=size, status=DatasetStatus.uploaded.value,
        rows=None, validation=None, validation_status=None,
    )
    for ft in db.finetunes_using(conn, dataset_id, frozenset({FinetuneStatus.validation_successful,
                                                              FinetuneStatus.validation_failed})):
        db.set_finetune_status(
            conn, ft["id"], FinetuneStatus.created, message=f"dataset {dataset_id} got a new file; validate again",
            validation=None, validation_run=None,
        )


def _empty(key: str) -> Unprocessable:
    """A 0-byte file is a failed upload (an empty body, a wrong path after ``@``), never a dataset."""
    return Unprocessable(
        f"the file at s3_path '{key}' is empty (0 bytes): upload it again with its content as the request body "
        "(curl --data-binary @file.jsonl or -T file.jsonl)", error="empty_file",
    )


def _with_content(chunks: Iterable[bytes] | BinaryIO, key: str) -> Iterator[bytes]:
    """The body's chunks, once a non-empty one has arrived: an empty body is refused before anything
    is stored (so an earlier file of the dataset stays as it was).

    Raises: Unprocessable (empty_file)."""
    it = iter_chunks(chunks)
    for first in it:
        if first:
            return itertools.chain([first], it)
    raise _empty(key)


def attach(gw: Gateway, who: Principal, dataset_id: str, s3_path: str) -> DatasetPublic:
    """Record the object a dataset's file is (``PUT /v1/datasets/{id} {"s3_path"}``).

    Raises: NotFound, BadRequest (not the workspace's object), Unprocessable (no object there, or an
    empty one), Conflict (a finetune is using the dataset)."""
    with tx(gw.engine) as conn:
        db.get_dataset(conn, dataset_id, who.workspace_id)
    key = _key_of(gw, who.workspace_id, s3_path)
    uri = gw.store.default_uri(key)
    try:
        info = gw.store.stat(uri)
    except ObjectNotFound as e:
        raise Unprocessable(f"no object at s3_path '{key}': upload the file to the signed URL first") from e
    if info.size == 0:
        raise _empty(key)
    with tx(gw.engine) as conn:
        _record_file(conn, dataset_id, key, uri, info.size)
        return db.dataset_public(db.get_dataset(conn, dataset_id, who.workspace_id))


def autoattach(gw: Gateway, conn: Connection, row: RowMapping) -> RowMapping:
    """A dataset still awaiting upload whose signed S3 PUT has landed gets attached on first use."""
    if row["uri"] is not None:
        return row
    uri = gw.store.default_uri(row["target_key"])
    try:
        info = gw.store.stat(uri)
    except ObjectNotFound:
        return row
    _record_file(conn, row["id"], row["target_key"], uri, info.size)
    return db.get_dataset(conn, row["id"], None)


def upload_signed(
    gw: Gateway, dataset_id: str, expires: int, sig: str, chunks: Iterable[bytes], content_length: int | None,
    nonce: str = "",
) -> DatasetPublic:
    """Store the body of a PUT to a signed upload URL as the dataset's file, then attach it.

    Raises: Forbidden (bad, expired or used signature, or no such dataset), PayloadTooLarge (nothing is stored),
    Conflict (a finetune is using the dataset)."""
    with tx(gw.engine) as conn:
        try:
            row = db.get_dataset(conn, dataset_id, None)
        except NotFound as e:  # unauthenticated callers learn nothing about which ids exist
            raise signing.SignatureInvalid("the upload URL's signature does not match; request a new URL") from e
    signing.verify(gw.upload_secret, dataset_id, row["target_key"], expires, sig, nonce)
    sig_hash = hashlib.sha256(sig.encode()).hexdigest()
    with tx(gw.engine) as conn:  # single use: claimed before the body is read, so two racing PUTs cannot both land
        if not db.claim_upload_url(conn, sig_hash, dataset_id, datetime.fromtimestamp(expires, UTC)):
            raise signing.SignatureUsed("this upload URL was already used; request a new one "
                                        f"(POST /v1/datasets/{dataset_id}/signed_url)")
    try:
        return _store_and_attach(gw, row, chunks, content_length, gw.settings.max_upload_bytes)
    except Exception:
        with tx(gw.engine) as conn:  # nothing was stored: the URL may be used again until it expires
            db.release_upload_url(conn, sig_hash)
        raise


def upload_direct(
    gw: Gateway, who: Principal, body: DatasetCreate, fh: BinaryIO, content_length: int | None, base_url: str
) -> DatasetPublic:
    """Multipart ``POST /v1/datasets/upload``: create the dataset and store its file in one call."""
    limit = gw.settings.max_direct_upload_bytes
    if content_length is not None and content_length > limit + 64 * 1024:  # multipart framing allowance
        raise _too_large(limit)
    created = create(gw, who, body, base_url)
    with tx(gw.engine) as conn:
        row = db.get_dataset(conn, created.id, who.workspace_id)
    try:
        return _store_and_attach(gw, row, fh, None, limit)
    except Exception:
        with tx(gw.engine) as conn:  # a refused upload leaves no empty dataset behind
            db.delete_dataset(conn, created.id)
        raise


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file is larger than the limit of {limit} bytes")


def _store_and_attach(
    gw: Gateway, row: RowMapping, chunks: Iterable[bytes] | BinaryIO, content_length: int | None, limit: int
) -> DatasetPublic:
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    with tx(gw.engine) as conn:
        _check_replaceable(conn, row["id"])  # fail before reading the body
    uri = gw.store.default_uri(row["target_key"])
    size = gw.store.put_stream(uri, _with_content(chunks, row["target_key"]), max_bytes=limit)
    with tx(gw.engine) as conn:
        _record_file(conn, row["id"], row["target_key"], uri, size)
        return db.dataset_public(db.get_dataset(conn, row["id"], None))


def delete(gw: Gateway, who: Principal, dataset_id: str) -> None:
    """Delete the dataset (and its uploaded object, if the gateway stored it).

    Raises: NotFound, Conflict (a pending/running finetune or a validation uses it)."""
    with tx(gw.engine) as conn:
        row = db.get_dataset(conn, dataset_id, who.workspace_id)
        _check_replaceable(conn, dataset_id)
    if row["uri"] and row["s3_path"] == row["target_key"]:
        gw.store.delete(row["uri"])  # a file the user attached from elsewhere in their prefix stays
    with tx(gw.engine) as conn:
        _check_replaceable(conn, dataset_id)
        db.delete_dataset(conn, dataset_id)


def record_validation(conn: Connection, dataset_id: str, report: ValidationReport, status: FinetuneStatus) -> None:
    db.update_dataset(
        conn, dataset_id, rows=report.rows, validation=report.model_dump(mode="json"), validation_status=status.value,
    )


def dataset_for_finetune(
    gw: Gateway, conn: Connection, dataset_id: str, workspace_id: str, role: str, *, attach_landed: bool = True
) -> dict[str, Any]:
    """The dataset a finetune names, with its file (with ``attach_landed``, a signed S3 upload that
    landed but was never attached is attached now).

    Raises: Conflict (deleted, or no file yet)."""
    try:
        row = db.get_dataset(conn, dataset_id, workspace_id)
    except NotFound as e:
        raise Conflict(f"{role} dataset '{dataset_id}' no longer exists; attach another with PUT /v1/finetune/{{id}}") from e
    if attach_landed:
        row = autoattach(gw, conn, row)
    if row["uri"] is None:
        raise Conflict(
            f"{role} dataset '{dataset_id}' has no file yet: PUT it to its signed_url, then PUT /v1/datasets/{dataset_id}"
        )
    return dict(row)
