"""``s3://`` objects through boto3 (AWS, MinIO, moto): streamed multipart uploads, presigned URLs.

boto3 is imported on first use, so an API process that only ever sees ``file://`` never loads
it. botocore errors become the ``common.errors`` tree, keeping the error code and the endpoint
(without any ``user:password@``), never the message or the credentials.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from common.errors import AccessDenied, ObjectNotFound, StorageError
from common.storage.base import ObjectInfo, PresignMethod, parse_uri

if TYPE_CHECKING:
    from botocore.client import BaseClient

# S3 refuses multipart parts under 5 MiB (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
# Keys per DeleteObjects request (the S3 maximum).
DELETE_BATCH = 1000
_DENIED_CODES = frozenset({"AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_PRESIGN_METHODS: dict[PresignMethod, str] = {"get": "get_object", "put": "put_object"}


def safe_endpoint(endpoint: str | None) -> str:
    """The endpoint without any ``user:password@`` part, fit for an error message."""
    if not endpoint:
        return "the default AWS S3 endpoint"
    split = urlsplit(endpoint)
    netloc = split.netloc.rpartition("@")[2]
    return urlunsplit((split.scheme, netloc, split.path, "", ""))


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


class S3Backend:
    """Objects in S3 buckets. The boto3 client is built on first use and is thread-safe."""

    def __init__(self, endpoint_url: str | None, region: str, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.part_size = part_size
        self._client_obj: BaseClient | None = None
        self._client_lock = threading.Lock()

    def client(self) -> BaseClient:
        """The boto3 S3 client, built once; boto3 is imported here so API start-up stays fast."""
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                self._client_obj = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
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
    def errors(self, uri: str, op: str) -> Iterator[None]:
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
            raise _map_client_error(e, uri, op) from e
        except (EndpointConnectionError, BotoConnectionError) as e:
            raise StorageError(f"cannot reach S3 endpoint {safe_endpoint(self.endpoint_url)} ({op} {uri})") from e
        except NoCredentialsError as e:
            raise StorageError(f"no S3 credentials configured ({op} {uri})") from e
        except BotoCoreError as e:
            raise StorageError(f"S3 {op} failed for {uri}: {type(e).__name__}") from e

    def encode(self, segment: str) -> str:
        return segment  # S3 keys are literal, as in the AWS CLI

    def check_bucket(self, uri: str) -> None:
        """HeadBucket on ``uri``'s bucket: whether the storage location exists before anything is stored.

        Raises:
            ObjectNotFound: the endpoint says the bucket does not exist.
            StorageError: any other failure (endpoint unreachable, no credentials, access denied).
        """
        _, bucket, _ = parse_uri(uri)
        from botocore.exceptions import ClientError

        try:
            with self.errors(uri, "HeadBucket"):
                self.client().head_bucket(Bucket=bucket)
        except StorageError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and str(cause.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                raise ObjectNotFound(f"bucket '{bucket}' does not exist at {safe_endpoint(self.endpoint_url)}") from cause
            raise

    def check(self, uri: str) -> None:
        parse_uri(uri)  # a bucket is all an s3:// URI must name

    # ---------------------------------------------------------------- writes

    def put_bytes(self, uri: str, data: bytes, content_type: str | None) -> None:
        _, bucket, key = parse_uri(uri)
        extra = {"ContentType": content_type} if content_type else {}
        with self.errors(uri, "put"):
            self.client().put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def put_stream(self, uri: str, chunks: Iterator[bytes]) -> int:
        """Multipart upload holding at most one part in memory.

        Small streams (under one part) go in a single PutObject. The multipart
        upload is aborted on any error, so S3 never completes a partial object.
        """
        _, bucket, key = parse_uri(uri)
        client = self.client()
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        with self.errors(uri, "put"):
                            upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    parts.append(self._upload_part(uri, upload_id, len(parts) + 1, part))
            if upload_id is None:
                with self.errors(uri, "put"):
                    client.put_object(Bucket=bucket, Key=key, Body=bytes(buffer))
                return total
            if buffer:
                parts.append(self._upload_part(uri, upload_id, len(parts) + 1, bytes(buffer)))
            with self.errors(uri, "put"):
                client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            return total
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _upload_part(self, uri: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        _, bucket, key = parse_uri(uri)
        with self.errors(uri, "put"):
            resp = self.client().upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    # ----------------------------------------------------------------- reads

    @contextlib.contextmanager
    def _open(self, uri: str) -> Iterator[BinaryIO]:
        _, bucket, key = parse_uri(uri)
        with self.errors(uri, "get"):
            body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
        with contextlib.closing(body):
            yield body

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        return self._open(uri)

    def read_errors(self, uri: str) -> AbstractContextManager[None]:
        """Errors raised while streaming a body (read timeouts, dropped connections)."""
        return self.errors(uri, "read")

    def stat(self, uri: str) -> ObjectInfo:
        _, bucket, key = parse_uri(uri)
        with self.errors(uri, "head"):
            head = self.client().head_object(Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(head["ContentLength"]), head.get("LastModified"))

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Keys under ``prefix/`` (a prefix acts like a directory: ``p`` covers ``p/...``, not ``pq``)."""
        _, bucket, key = parse_uri(prefix_uri)
        prefix = key if not key or key.endswith("/") else key + "/"
        infos = []
        with self.errors(prefix_uri, "list"):
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    infos.append(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj.get("LastModified")))
        return infos

    # --------------------------------------------------------------- deletes

    def delete(self, uri: str) -> None:
        _, bucket, key = parse_uri(uri)
        with self.errors(uri, "delete"):
            self.client().delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, prefix_uri: str, infos: builtins.list[ObjectInfo]) -> int:
        _, bucket, _ = parse_uri(prefix_uri)
        keys = [parse_uri(info.uri)[2] for info in infos]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            with self.errors(prefix_uri, "delete"):
                resp = self.client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := resp.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} object(s) under {prefix_uri}, "
                    f"e.g. s3://{bucket}/{first.get('Key')}: {first.get('Code')}"
                )
        return len(keys)

    # ------------------------------------------------------------- presigning

    def presign(self, uri: str, method: PresignMethod, expires_seconds: int, content_type: str | None) -> str:
        _, bucket, key = parse_uri(uri)
        params = {"Bucket": bucket, "Key": key}
        if content_type:
            params["ContentType"] = content_type
        with self.errors(uri, "presign"):
            return str(
                self.client().generate_presigned_url(_PRESIGN_METHODS[method], Params=params, ExpiresIn=expires_seconds)
            )
