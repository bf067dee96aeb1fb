"""A finetune's output files, per run, with signed download URLs (``GET /v1/finetune/{id}/artifacts``).

Every ended job of the finetune is a run (``runs``, kept across resets), plus the current job while
it is active. Each run lists what exists under its output_uri now: a job cancelled or failed before
it saved anything lists no files and says so, never a URI that points at nothing. URLs are S3's
presigned GET for s3:// storage, else the gateway's own signed URL (``gateway.signing``), served by
``download`` without an API key: the URL is the credential, short-lived like an upload URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, BinaryIO

from common.db import tx
from common.errors import NotFound, TrainyardError
from common.schemas import ArtifactFile, ArtifactsPublic, FinetuneStatus, JobStatus, RunArtifacts
from gateway import db, mirror, signing
from gateway.auth import Principal
from gateway.context import Gateway

NO_OUTPUT = "this job wrote no output files (it ended before saving any)"
NOT_YET = "no output files yet: a job's outputs are stored when it ends"


def _runs(row: Any) -> list[dict[str, Any]]:
    """Newest first: the current job (if active), then ended ones."""
    runs = list(reversed(row["runs"] or []))
    status = FinetuneStatus(row["status"])
    if status.has_job and row["job_id"] and all(r["job_id"] != row["job_id"] for r in runs):
        runs.insert(0, {"job_id": row["job_id"], "status": status.value, "output_uri": row["output_uri"]})
    return runs


def list_(gw: Gateway, who: Principal, finetune_id: str, base_url: str) -> ArtifactsPublic:
    """Raises: NotFound (also another workspace's finetune)."""
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, who.workspace_id)
    if mirror.refresh_if_stale(gw, row):
        with tx(gw.engine) as conn:
            row = db.get_finetune(conn, finetune_id, who.workspace_id)
    return ArtifactsPublic(finetune_id=finetune_id, runs=[_run(gw, finetune_id, r, base_url) for r in _runs(row)])


def _run(gw: Gateway, finetune_id: str, run: dict[str, Any], base_url: str) -> RunArtifacts:
    status = JobStatus(run["status"])
    out = RunArtifacts(job_id=run["job_id"], status=status, output_uri=run["output_uri"])
    infos = []
    if run["output_uri"] and status.terminal:
        try:
            infos = gw.store.list(run["output_uri"])
        except TrainyardError:  # the store cannot be read: say so rather than fail the whole listing
            out.note = "the output files cannot be listed now (storage unavailable); try again"
            return out
    if not infos:
        out.output_uri = None  # nothing there: do not hand out a URI that points at nothing
        out.note = NO_OUTPUT if status.terminal else NOT_YET
        return out
    prefix = run["output_uri"].rstrip("/") + "/"
    ttl = gw.settings.download_url_ttl_seconds
    for info in infos:
        path = info.uri[len(prefix):]
        if gw.uses_s3:
            url = gw.store.presign_get(info.uri, expires_seconds=ttl)
            expires = int(datetime.now(UTC).timestamp()) + ttl
        else:
            base = gw.settings.gateway_public_url or base_url
            url, expires = signing.download_url(base, gw.upload_secret, finetune_id, run["job_id"], path, ttl)
        out.files.append(ArtifactFile(path=path, size_bytes=info.size, url=url,
                                      expires_at=datetime.fromtimestamp(expires, UTC)))
    return out


def download(gw: Gateway, finetune_id: str, job_id: str, path: str, expires: int, sig: str
             ) -> tuple[AbstractContextManager[BinaryIO], int]:
    """The file a signed download URL names: (an open stream, its size).

    Raises: SignatureInvalid, SignatureExpired (403); NotFound (no such run or file)."""
    signing.verify_download(gw.upload_secret, finetune_id, job_id, path, expires, sig)
    with tx(gw.engine) as conn:
        row = db.get_finetune(conn, finetune_id, None)
    run = next((r for r in _runs(row) if r["job_id"] == job_id and r["output_uri"]), None)
    if run is None:
        raise NotFound(f"finetune '{finetune_id}' has no outputs of job '{job_id}'")
    uri = gw.store.join(run["output_uri"], path)
    info = gw.store.stat(uri)
    return gw.store.open(uri), info.size


def chunks(stream: AbstractContextManager[BinaryIO], size: int = 1024 * 1024) -> Iterator[bytes]:
    with stream as fh:
        while block := fh.read(size):
            yield block
