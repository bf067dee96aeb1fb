"""/v1/dataservice/*: the dataset and finetune routes for the control plane.

Same operations as /v1/datasets and /v1/finetune, authenticated by TRAINYARD_INTERNAL_TOKEN
(``Authorization: Bearer``) and acting on the workspace named by the ``x-workspace-id`` header.
Served by the public app unless TRAINYARD_GATEWAY_SERVE_INTERNAL=false, and always by
``gateway.app:internal_app`` (``trainyard serve gateway-internal``) for a port only the cluster reaches.
"""

from fastapi import APIRouter

from gateway.deps import INTERNAL
from gateway.routes import datasets, finetune

router = APIRouter(prefix="/v1/dataservice")
router.include_router(datasets.build_router(INTERNAL, tag="dataservice"))
router.include_router(finetune.build_router(INTERNAL, tag="dataservice"))
