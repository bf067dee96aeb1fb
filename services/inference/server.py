"""The inference service's app factory: the API process, with the engine in a worker process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common import logredact
from common.bodylimit import install_body_limit
from common.errors import install_handlers
from common.service_auth import check_service_token, service_token_bytes
from common.settings import Settings, get_settings
from common.version import VERSION
from services.inference.api_router import health_router, router
from services.inference.engine_client import EngineClient
from services.inference.serving import InferenceServing

log = logging.getLogger("trainyard.inference")


def create_inference_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_service_token(settings, "the inference service")
        app.state.service_token = service_token_bytes(settings)
        logredact.install()
        engine = EngineClient(settings)
        engine.start()
        app.state.serving = InferenceServing(engine, settings)
        log.info("inference service ready (engine %s)", settings.inference_engine)
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(
        title="Trainyard inference",
        version=VERSION,
        description="OpenAI-compatible chat and completions for base and fine-tuned models, the playground, "
        "and export of merged weights. Internal: the gateway resolves models and forwards requests here.",
        lifespan=lifespan,
    )
    install_handlers(app)
    install_body_limit(app, settings.max_request_bytes)
    app.include_router(health_router)
    app.include_router(router)
    return app
