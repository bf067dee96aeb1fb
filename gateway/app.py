"""The gateway app: users' /v1/datasets and /v1/finetune, the control plane's /v1/dataservice/*,
signed uploads, routing to the trainer services.

    trainyard serve gateway             # gateway.app:app, public (and internal unless disabled)
    trainyard serve gateway-internal    # gateway.app:internal_app, /v1/dataservice/* only

The lifespan builds everything once (database engine, object store, pooled trainer client) and
owns the background threads (validation, job refresher), which it stops on shutdown.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common import idempotency, logredact, secretbox
from common.bodylimit import install_body_limit
from common.db import make_engine
from common.errors import install_handlers
from common.service_auth import check_service_token
from common.settings import Settings, get_settings
from common.storage import ObjectStore
from common.version import VERSION
from gateway import auth, db, models
from gateway.context import Gateway
from gateway.deps import PUBLIC
from gateway.inference import InferenceClient
from gateway.routes import dataservice, datasets, downloads, finetune, health, uploads
from gateway.routes import inference as inference_routes
from gateway.routes import models as models_routes
from gateway.trainers import TrainerClient
from gateway.workers import Refresher, ValidationWorker

log = logging.getLogger("trainyard.gateway")

DESCRIPTION = """Trainyard's gateway. Flow: create a dataset → PUT the file to its `signed_url` → attach it
(`PUT /v1/datasets/{id}`) → create a finetune → attach the dataset (`PUT /v1/finetune/{id}`) →
`POST /v1/finetune/{id}/validation/start` → wait for `pk_dataset_validation_successfull` →
`POST /v1/finetune/{id}/start` → poll `GET /v1/finetune/{id}`. Send the API key as `x-portkey-api-key`
or `Authorization: Bearer`. Errors are `{"error", "detail", "status_code"}`."""


def create_app(settings: Settings | None = None, *, public: bool = True) -> FastAPI:
    """``public=False`` builds the internal-only app (health + /v1/dataservice/*)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        auth.check_secrets(settings)
        check_service_token(settings, "the gateway (its calls to the trainer services)")
        box = secretbox.from_settings(settings)
        logredact.install()
        engine = make_engine(settings.database_url)
        db.init_db(engine)
        auth.seed_admin_key(engine, settings)
        if settings.upload_signing_secret is None:
            log.warning("TRAINYARD_UPLOAD_SIGNING_SECRET is not set: upload URLs stop working when this process exits")
            upload_secret = secrets.token_bytes(32)
        else:
            upload_secret = settings.upload_signing_secret.get_secret_value().encode()
        store = ObjectStore(settings)
        store.check_location()
        gw = Gateway(settings, engine, store, TrainerClient(settings), upload_secret,
                     inference=InferenceClient(settings), box=box)
        validation = ValidationWorker(gw, settings.validation_workers)
        gw.wake_validation = validation.wake
        refresher = Refresher(gw, settings.refresh_interval_seconds)
        app.state.gateway = gw
        app.state.idempotency = idempotency.IdempotencyStore(engine, settings.idempotency_ttl_seconds)
        models.register_missing(gw)  # finetunes that completed while no gateway ran
        validation.start()
        refresher.start()
        log.info("gateway ready (%s)", "public" if public else "internal")
        try:
            yield
        finally:
            refresher.stop()
            validation.stop()
            gw.trainers.close()
            await gw.inference.aclose()
            engine.dispose()

    app = FastAPI(
        title="Trainyard gateway" if public else "Trainyard gateway (internal)",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_handlers(app)
    # the upload routes stream to storage under their own limits (max_upload_bytes, max_direct_upload_bytes)
    install_body_limit(app, settings.max_request_bytes,
                       exempt=("/v1/uploads/", "/v1/datasets/upload", "/v1/dataservice/datasets/upload"))
    idempotency.install(app)
    app.include_router(health.router)
    if public:
        app.include_router(datasets.build_router(PUBLIC), prefix="/v1")
        app.include_router(finetune.build_router(PUBLIC), prefix="/v1")
        app.include_router(models_routes.build_router(PUBLIC), prefix="/v1")
        app.include_router(inference_routes.openai, prefix="/v1")
        app.include_router(inference_routes.router, prefix="/v1")
        app.include_router(uploads.router)
        app.include_router(downloads.router)
    if not public or settings.gateway_serve_internal:
        app.include_router(dataservice.router)
    return app


app = create_app()
internal_app = create_app(public=False)
