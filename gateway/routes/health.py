"""/health (no auth, for probes) and /v1/services (which trainer services the gateway can reach).

Service URLs are internal addresses: only the admin key sees them."""

from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from common.schemas import Health, ListEnvelope
from common.version import VERSION
from gateway import auth
from gateway.deps import GatewayDep, ReaderDep

router = APIRouter(tags=["meta"])


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(version=VERSION)


@router.get("/v1/services", response_model=ListEnvelope[dict[str, Any]])
async def services(who: ReaderDep, gw: GatewayDep) -> ListEnvelope[dict[str, Any]]:
    """Each trainer service's name, whether it answers, and its /info (backend, methods); its URL
    only for the admin key."""
    admin = await run_in_threadpool(auth.is_admin, gw.engine, gw.settings, who)

    def probe(name: str, url: str) -> dict[str, Any]:
        where = {"url": url} if admin else {}
        try:
            r = gw.trainers.http.get(f"{url}/info", timeout=2.0)
        except httpx.HTTPError as e:  # unreachable is an answer here, not a failure
            return {"name": name, **where, "reachable": False, "error": type(e).__name__}
        try:
            info = r.json() if r.status_code == 200 else None
        except ValueError:
            info = None
        return {"name": name, **where, "reachable": r.status_code == 200, "info": info}

    data = [await run_in_threadpool(probe, n, u) for n, u in gw.trainers.urls.items()]
    return ListEnvelope(data=data, count=len(data))
