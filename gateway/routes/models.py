"""/v1/models: OpenAI's models API over the registry (gateway.models), plus the registry's fields."""

from typing import Annotated

from fastapi import APIRouter, Depends

from common.schemas import ErrorBody, ModelDeleted, ModelPublic, ModelsPublic
from gateway import models
from gateway.auth import Principal
from gateway.deps import Auth, GatewayDep

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 502)}


def build_router(auth: Auth, tag: str = "models") -> APIRouter:
    Reader = Annotated[Principal, Depends(auth.read)]
    Writer = Annotated[Principal, Depends(auth.write)]
    router = APIRouter(prefix="/models", tags=[tag], responses=ERRORS)

    @router.get("", response_model=ModelsPublic)
    def list_models(who: Reader, gw: GatewayDep) -> ModelsPublic:
        """The catalog's base models and this workspace's fine-tuned models (`ft:<finetune id>`)."""
        return models.list_(gw, who)

    # `:path`: base model ids are hub ids with a slash (clients send it as %2F)
    @router.get("/{model_id:path}", response_model=ModelPublic)
    def get_model(model_id: str, who: Reader, gw: GatewayDep) -> ModelPublic:
        """A model: base model, method, training parameters, metrics, size, artifact URIs."""
        return models.get(gw, who, model_id)

    @router.delete("/{model_id:path}", response_model=ModelDeleted)
    def delete_model(model_id: str, who: Writer, gw: GatewayDep) -> ModelDeleted:
        """Delete a fine-tuned model and its artifacts (403 for a base model)."""
        return models.delete(gw, who, model_id)

    return router
