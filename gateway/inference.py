"""The gateway's client of the inference service: one pooled async httpx client, streams passed through.

The gateway resolves ``model`` in the caller's workspace (``gateway.models.resolve_for_inference``) and
forwards the validated request with the resolution in two headers (``common.schemas.inference``).
A streamed answer is relayed chunk by chunk as it arrives, never buffered. Failures:

    service not reachable              ServiceUnavailable (503)
    service answered an error          the same status, with its message (OpenAI's or ours)
    service answered garbage / 5xx     InferenceServiceError (502)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel

from common.components import Kind, of_kind
from common.errors import ServiceUnavailable, TrainyardError
from common.schemas.inference import ADAPTER_HEADER, BASE_MODEL_HEADER, CALLER_HEADER
from common.service_auth import auth_header
from common.settings import Settings

if TYPE_CHECKING:
    from gateway.models import ServedModel

log = logging.getLogger("trainyard.gateway.inference")


class InferenceServiceError(TrainyardError):
    status_code, error = 502, "inference_service_error"


def _raise_for(r: httpx.Response, body: Any) -> None:
    """Re-raise the service's error as ours, keeping its status and message."""
    if r.status_code >= 500 and r.status_code != 503:
        log.warning("inference service answered %s", r.status_code)
        raise InferenceServiceError(f"the inference service answered HTTP {r.status_code}")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):  # OpenAI's shape
        message, code = err.get("message", ""), err.get("code")
    else:
        message, code = (body or {}).get("detail", f"HTTP {r.status_code}"), err
    exc = TrainyardError(message, error=code if isinstance(code, str) else None)
    exc.status_code = r.status_code
    raise exc


class InferenceClient:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        [service] = of_kind(Kind.inference)  # the one inference service (common.components)
        self.url = settings.service_urls[service.name]
        self.export_timeout = settings.inference_export_timeout_seconds
        t = settings.inference_timeout_seconds
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(t, connect=3.0, pool=min(t, 30.0)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            headers=auth_header(settings),  # the service credential, on every call
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    @staticmethod
    def _headers(served: ServedModel | None, caller: str) -> dict[str, str]:
        headers = {CALLER_HEADER: caller}
        if served is not None:
            headers[BASE_MODEL_HEADER] = served.base_model
            if served.adapter_uri:
                headers[ADAPTER_HEADER] = served.adapter_uri
        return headers

    async def _send(self, path: str, body: BaseModel | dict[str, Any], headers: dict[str, str], *,
                    stream: bool = False, timeout: float | None = None) -> httpx.Response:
        payload = body.model_dump(exclude_unset=True) if isinstance(body, BaseModel) else body
        request = self.http.build_request("POST", path, json=payload, headers=headers,
                                          timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        try:
            r = await self.http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise ServiceUnavailable(f"the inference service at {self.url} is unreachable ({type(e).__name__}); is it running?") from e
        except httpx.TransportError as e:
            raise ServiceUnavailable(f"the inference service at {self.url} did not answer ({type(e).__name__})") from e
        if r.status_code >= 400:
            if stream:
                await r.aread()
                await r.aclose()
            try:
                data = r.json()
            except ValueError:
                data = None
            _raise_for(r, data)
        return r

    async def post(self, path: str, body: BaseModel | dict[str, Any], served: ServedModel | None, caller: str,
                   *, timeout: float | None = None) -> dict[str, Any]:
        r = await self._send(path, body, self._headers(served, caller), timeout=timeout)
        try:
            data = r.json()
        except ValueError as e:
            raise InferenceServiceError("the inference service answered a body that is not JSON") from e
        if not isinstance(data, dict):
            raise InferenceServiceError("the inference service answered an unexpected body")
        return data

    async def stream(self, path: str, body: BaseModel, served: ServedModel, caller: str) -> AsyncIterator[bytes]:
        """Open the stream (errors before the first byte raise here), then relay its bytes as they come."""
        r = await self._send(path, body, self._headers(served, caller), stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_raw():
                    yield chunk
            except httpx.TransportError as e:
                log.warning("inference stream broke off: %s", type(e).__name__)
            finally:
                await r.aclose()

        return relay()
