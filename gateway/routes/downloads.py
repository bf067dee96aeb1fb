"""GET /v1/finetune/{id}/runs/{job_id}/files/{path}?expires=&sig=: the gateway's signed download URL of
one output file (file:// storage). The URL is the credential: no API key; it works until ``expires``."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from common.schemas import ErrorBody
from gateway import artifacts
from gateway.deps import GatewayDep

router = APIRouter(tags=["downloads"], responses={c: {"model": ErrorBody} for c in (400, 403, 404)})


@router.get("/v1/finetune/{finetune_id}/runs/{job_id}/files/{path:path}", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_output_file(
    finetune_id: str,
    job_id: str,
    path: str,
    gw: GatewayDep,
    expires: Annotated[int, Query(description="Unix time the URL stops working.")],
    sig: Annotated[str, Query(max_length=128, description="HMAC-SHA256 signature of the URL.")],
) -> StreamingResponse:
    """Download one output file of a finetune's run (URLs come from GET /v1/finetune/{id}/artifacts)."""
    stream, size = artifacts.download(gw, finetune_id, job_id, path, expires, sig)
    name = path.rsplit("/", 1)[-1]
    return StreamingResponse(artifacts.chunks(stream), media_type="application/octet-stream",
                             headers={"content-length": str(size), "content-disposition": f'attachment; filename="{name}"'})
