"""Signed upload URLs for file:// storage: ``PUT /v1/uploads/{dataset_id}?expires=<unix>&nonce=<random>&sig=<hmac>``.

The signature is HMAC-SHA256 over the method, the dataset id, the object key the upload lands at,
the expiry and a random nonce (so every URL handed out is a different, single-use credential), keyed by TRAINYARD_UPLOAD_SIGNING_SECRET. The URL itself is the credential (like an
S3 presigned URL): no API key is needed to use it, and changing any part of it, using it after
``expires``, or using it again after an upload succeeded gets 403 (``gateway.datasets.upload_signed``
records each used signature). With s3:// storage the gateway hands out S3's own presigned PUT
instead (short-lived, not single-use). Logs never show the query string (``common.logredact``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import quote, urlencode

from common.errors import Forbidden


class SignatureInvalid(Forbidden):
    error = "invalid_signature"


class SignatureExpired(Forbidden):
    error = "signature_expired"


class SignatureUsed(Forbidden):
    error = "signature_used"


def sign(secret: bytes, dataset_id: str, key: str, expires: int, nonce: str = "") -> str:
    msg = f"PUT\n{dataset_id}\n{key}\n{expires}".encode() + (f"\n{nonce}".encode() if nonce else b"")
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def upload_url(base_url: str, secret: bytes, dataset_id: str, key: str, ttl_seconds: int) -> tuple[str, int]:
    """(URL, expiry as unix seconds)."""
    expires = int(time.time()) + ttl_seconds
    nonce = secrets.token_hex(8)
    query = urlencode({"expires": expires, "nonce": nonce, "sig": sign(secret, dataset_id, key, expires, nonce)})
    return f"{base_url.rstrip('/')}/v1/uploads/{dataset_id}?{query}", expires


def verify(
    secret: bytes, dataset_id: str, key: str, expires: int, sig: str, nonce: str = "", *, now: float | None = None
) -> None:
    """Raises: SignatureInvalid (any part changed), SignatureExpired (valid but too late)."""
    expected = sign(secret, dataset_id, key, expires, nonce)
    # bytes, not str: compare_digest refuses non-ASCII str (a mangled ?sig= would be a 500)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
        raise SignatureInvalid("the upload URL's signature does not match; request a new URL")
    if (now if now is not None else time.time()) > expires:
        raise SignatureExpired("the upload URL has expired; request a new one (POST /v1/datasets)")


# Download URLs for a finetune's outputs (file:// storage): GET /v1/finetune/{id}/runs/{job}/files/{path}?expires=&sig=
# Signed like upload URLs, over GET and the file's place; reusable until ``expires`` (a download changes nothing).


def sign_download(secret: bytes, finetune_id: str, job_id: str, path: str, expires: int) -> str:
    msg = f"GET\n{finetune_id}\n{job_id}\n{path}\n{expires}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def download_url(base_url: str, secret: bytes, finetune_id: str, job_id: str, path: str, ttl_seconds: int) -> tuple[str, int]:
    """(URL, expiry as unix seconds)."""
    expires = int(time.time()) + ttl_seconds
    query = urlencode({"expires": expires, "sig": sign_download(secret, finetune_id, job_id, path, expires)})
    return f"{base_url.rstrip('/')}/v1/finetune/{finetune_id}/runs/{job_id}/files/{quote(path)}?{query}", expires


def verify_download(secret: bytes, finetune_id: str, job_id: str, path: str, expires: int, sig: str) -> None:
    """Raises: SignatureInvalid (any part changed), SignatureExpired (valid but too late)."""
    expected = sign_download(secret, finetune_id, job_id, path, expires)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
        raise SignatureInvalid("the download URL's signature does not match; list the artifacts again for a new URL")
    if time.time() > expires:
        raise SignatureExpired("the download URL has expired; list the artifacts again (GET /v1/finetune/{id}/artifacts)")
