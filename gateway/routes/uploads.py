"""PUT /v1/uploads/{dataset_id}?expires=&nonce=&sig=: the gateway's signed upload URL (file:// storage), single use.

The body streams to storage in the worker thread, chunk by chunk as it arrives, with the size
limit applied as it goes; nothing is buffered whole and a refused upload stores nothing.
"""

from collections.abc import Iterator
from typing import Annotated

import anyio
import anyio.from_thread
from fastapi import APIRouter, Query, Request

from common.schemas import DatasetPublic, Envelope, ErrorBody
from gateway import datasets
from gateway.deps import GatewayDep

router = APIRouter(tags=["uploads"], responses={c: {"model": ErrorBody} for c in (403, 404, 409, 413)})


@router.put("/v1/uploads/{dataset_id}", response_model=Envelope[DatasetPublic])
async def upload_to_signed_url(
    dataset_id: str,
    request: Request,
    gw: GatewayDep,
    expires: Annotated[int, Query(description="Unix time the URL stops working.")],
    sig: Annotated[str, Query(description="HMAC-SHA256 signature of the URL.")],
    nonce: Annotated[str, Query(max_length=64, description="Random part that makes each URL unique.")] = "",
) -> Envelope[DatasetPublic]:
    """Upload the dataset's file (the URL is the credential; no API key). Each URL works once: a second
    PUT after a successful one is 403 `signature_used`."""
    length = request.headers.get("content-length")
    stream = request.stream()

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(stream.__anext__)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    result = await anyio.to_thread.run_sync(
        lambda: datasets.upload_signed(
            gw, dataset_id, expires, sig, chunks(), int(length) if length and length.isdigit() else None, nonce
        )
    )
    return Envelope(data=result)
