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
# A service's /info answers at once (a slow start-up check reports "starting"), so this only waits
# out a service that accepted the connection and is stuck.
INFO_TIMEOUT_S = 5.0


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(version=VERSION)


@router.get("/v1/services", response_model=ListEnvelope[dict[str, Any]])
async def services(who: ReaderDep, gw: GatewayDep) -> ListEnvelope[dict[str, Any]]:
    """Each trainer service's name, whether it answers, its status (ready, starting while it checks its
    backend, unavailable, unreachable, not_responding) and its /info; its URL only for the admin key."""
    admin = await run_in_threadpool(auth.is_admin, gw.engine, gw.settings, who)

    def probe(name: str, url: str) -> dict[str, Any]:
        where = {"url": url} if admin else {}
        try:
            r = gw.trainers.http.get(f"{url}/info", timeout=INFO_TIMEOUT_S)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as e:  # it took the connection: up, but busy
            return {"name": name, **where, "reachable": True, "status": "not_responding", "error": type(e).__name__}
        except httpx.HTTPError as e:  # unreachable is an answer here, not a failure
            return {"name": name, **where, "reachable": False, "status": "unreachable", "error": type(e).__name__}
        try:
            info = r.json() if r.status_code == 200 else None
        except ValueError:
            info = None
        status = info.get("status", "ready") if isinstance(info, dict) else "error"
        return {"name": name, **where, "reachable": r.status_code == 200, "status": status, "info": info}

    data = [await run_in_threadpool(probe, n, u) for n, u in gw.trainers.urls.items()]
    return ListEnvelope(data=data, count=len(data))
