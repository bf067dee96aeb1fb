"""/health (no auth, for probes) and /v1/services (which trainer services the gateway can reach)."""

from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from common.schemas import Health, ListEnvelope
from common.version import VERSION
from gateway.deps import GatewayDep, ReaderDep

router = APIRouter(tags=["meta"])


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(version=VERSION)


@router.get("/v1/services", response_model=ListEnvelope[dict[str, Any]])
async def services(_: ReaderDep, gw: GatewayDep) -> ListEnvelope[dict[str, Any]]:
    """Each trainer service's URL, whether it answers, and its /info (backend, methods)."""

    def probe(name: str, url: str) -> dict[str, Any]:
        try:
            r = gw.trainers.http.get(f"{url}/info", timeout=2.0)
        except httpx.HTTPError as e:  # unreachable is an answer here, not a failure
            return {"name": name, "url": url, "reachable": False, "error": type(e).__name__}
        try:
            info = r.json()
        except ValueError:
            info = None
        return {"name": name, "url": url, "reachable": r.status_code == 200, "info": info}

    data = [await run_in_threadpool(probe, n, u) for n, u in gw.trainers.urls.items()]
    return ListEnvelope(data=data, count=len(data))
