"""The models registry behind /v1/models: what a finetune produced, per workspace, plus the catalog's
base models.

A finetune that completes registers its model once, as ``ft:<finetune id>`` (so the id is known
before training ends): right after the refresher sees the job complete, on every refresher tick for
any completed finetune still lacking its row (a crash between the two, a storage hiccup), on
gateway start, and lazily on a read. Registration reads the job's ``metrics.json`` and sizes its
output in storage before one conditional INSERT, so replicas racing on it register it once. A
finetune that is reset and run again points its model at the new output.

Deleting a model removes its artifacts from storage and marks the row deleted (kept, so it is never
registered again). Another workspace's model is a 404, as if it did not exist.

``resolve_for_inference`` and ``record_export`` are what the inference routes need: which base to
load with which adapter, and where an export wrote merged weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import RowMapping

from common.catalog import CatalogModel, catalog, resolve
from common.db import tx
from common.errors import BadRequest, Conflict, Forbidden, NotFound, ObjectNotFound, TrainyardError
from common.schemas import (
    Customization,
    FinetuneHyperparameters,
    FinetuneStatus,
    Method,
    ModelDeleted,
    ModelKind,
    ModelMetrics,
    ModelPublic,
    ModelsPublic,
)
from gateway import db
from gateway.auth import Principal
from gateway.context import Gateway
from gateway.db import finetune_id_of, model_id

log = logging.getLogger("trainyard.gateway.models")

FS = FinetuneStatus
EV = db.FinetuneEventType
METRICS_FILE = "metrics.json"  # written by the training program beside the adapter
DEFAULT_METHOD = Customization.model_fields["method"].default


def merged_target(adapter_uri: str) -> str:
    """Where an export writes a model's merged weights: beside its adapter."""
    return adapter_uri.rstrip("/") + "-merged"


# --------------------------------------------------------------------------- public shapes


def base_public(entry: CatalogModel) -> ModelPublic:
    return ModelPublic(
        id=entry.id, created=0, owned_by=entry.owned_by, kind=ModelKind.base, name=entry.id,
        description=entry.description, available=entry.available,
    )


def _base(gw: Gateway, model_id: str) -> CatalogModel | None:
    return resolve(model_id, gw.settings)


# --------------------------------------------------------------------------- registration


def register(gw: Gateway, finetune_id: str) -> RowMapping | None:
    """Register the model of a completed finetune (idempotent); None if it has not completed.

    Raises: StorageError (metrics or artifacts unreadable: a later tick tries again)."""
    with tx(gw.engine) as conn:
        ft = db.get_finetune(conn, finetune_id, None)
        existing = db.get_model(conn, model_id(finetune_id), None, deleted=True)
    if FS(ft["status"]) != FS.completed or not ft["output_uri"] or not ft["job_id"]:
        return None
    if existing is not None and existing["job_id"] == ft["job_id"]:
        return existing if existing["deleted_at"] is None else None
    output = ft["output_uri"]
    hp = FinetuneHyperparameters.model_validate(ft["hyperparameters"] or {})
    method = hp.method or DEFAULT_METHOD
    full = method == Method.full
    row: dict[str, Any] = {
        "workspace_id": ft["workspace_id"], "finetune_id": finetune_id, "job_id": ft["job_id"], "name": ft["name"],
        "base_model": ft["override_model"] or ft["model"], "provider": ft["provider"],
        "training_type": ft["training_type"], "method": method.value, "training_params": ft["hyperparameters"] or {},
        "metrics": ModelMetrics.from_job(_job_metrics(gw, output, ft["metrics"] or {})).model_dump(mode="json"),
        "size_bytes": sum(o.size for o in gw.store.list(output)),
        # a full fine-tune's output is complete weights already: nothing to merge
        "adapter_uri": None if full else output, "merged_uri": output if full else None,
        "created_at": db.aware(ft["finished_at"]) or db.utcnow(), "deleted_at": None,
    }
    mid = model_id(finetune_id)
    with tx(gw.engine) as conn:
        if existing is None:
            done = db.insert_model_once(conn, {"id": mid, **row})
        else:
            done = db.replace_model(conn, mid, existing["job_id"], row)
        if done:
            db.add_event(conn, finetune_id, EV.model, f"model {mid} registered", data={"model": mid, "uri": output})
        registered = db.get_model(conn, mid, None)
    if done:
        log.info("registered model %s (%s)", mid, output)
    return registered


def _job_metrics(gw: Gateway, output_uri: str, mirrored: dict[str, Any]) -> dict[str, Any]:
    """The job's metrics.json; the metrics mirrored from its public record if the file is missing."""
    try:
        data = json.loads(gw.store.get_bytes(gw.store.join(output_uri, METRICS_FILE)))
    except ObjectNotFound:
        return mirrored
    except ValueError:
        log.warning("%s under %s is not JSON; using the job's reported metrics", METRICS_FILE, output_uri)
        return mirrored
    return data if isinstance(data, dict) else mirrored


def register_missing(gw: Gateway, workspace_id: str | None = None) -> int:
    """Register every completed finetune lacking its model; returns how many were registered.
    One that cannot be registered now (storage down) is logged and left for the next call."""
    with tx(gw.engine) as conn:
        ids = db.unregistered_finetunes(conn, workspace_id)
    count = 0
    for finetune_id in ids:
        try:
            count += register(gw, finetune_id) is not None
        except TrainyardError as e:
            log.warning("model of finetune %s not registered yet: %s", finetune_id, e.detail)
    return count


# --------------------------------------------------------------------------- routes' operations


def list_(gw: Gateway, who: Principal) -> ModelsPublic:
    """The catalog's base models, then this workspace's fine-tuned models, newest first."""
    register_missing(gw, who.workspace_id)
    with tx(gw.engine) as conn:
        rows = db.list_models(conn, who.workspace_id)
    return ModelsPublic(data=[base_public(m) for m in catalog(gw.settings)] + [db.model_public(r) for r in rows])


def _fine_tuned(gw: Gateway, workspace_id: str, model_id_: str) -> RowMapping:
    """A live fine-tuned model of this workspace, registering it first if its finetune just completed.

    Raises: NotFound (unknown, deleted, another workspace's, or its finetune has not completed)."""
    with tx(gw.engine) as conn:
        row = db.get_model(conn, model_id_, workspace_id)
    if row is not None:
        return row
    finetune_id = finetune_id_of(model_id_)
    if finetune_id is not None:
        with tx(gw.engine) as conn:
            ft = _finetune_or_none(conn, finetune_id, workspace_id)
        if ft is not None and (registered := register(gw, finetune_id)) is not None:
            return registered
    raise NotFound(f"model '{model_id_}' not found")


def _finetune_or_none(conn: Any, finetune_id: str, workspace_id: str) -> RowMapping | None:
    try:
        return db.get_finetune(conn, finetune_id, workspace_id)
    except NotFound:
        return None


def get(gw: Gateway, who: Principal, model_id_: str) -> ModelPublic:
    """Raises: NotFound (unknown, deleted or another workspace's)."""
    if (entry := _base(gw, model_id_)) is not None:
        return base_public(entry)
    return db.model_public(_fine_tuned(gw, who.workspace_id, model_id_))


def delete(gw: Gateway, who: Principal, model_id_: str) -> ModelDeleted:
    """Remove a fine-tuned model's artifacts from storage, then its registry entry.

    Raises: Forbidden (a base model); NotFound; StorageError (nothing is marked deleted: retry)."""
    if _base(gw, model_id_) is not None:
        raise Forbidden(f"'{model_id_}' is a base model of the catalog; only fine-tuned models can be deleted")
    row = _fine_tuned(gw, who.workspace_id, model_id_)
    removed = sum(gw.store.delete_prefix(uri) for uri in (row["adapter_uri"], row["merged_uri"]) if uri)
    with tx(gw.engine) as conn:
        db.update_model(conn, model_id_, deleted_at=db.utcnow())
        db.add_event(conn, row["finetune_id"], EV.model, f"model {model_id_} deleted ({removed} objects removed)",
                     data={"model": model_id_})
    return ModelDeleted(id=model_id_)


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class ServedModel:
    id: str
    base_model: str  # catalog id, hub id, local path or storage URI: what the inference engine loads
    adapter_uri: str | None  # storage URI of the PEFT adapter directory; None for a base or full model


def resolve_for_inference(gw: Gateway, workspace_id: str, model_id_: str) -> ServedModel:
    """What to load to serve ``model_id_`` for this workspace.

    A base model of the catalog loads as itself; a LoRA model is its base plus its adapter; a full
    fine-tune (or nothing but merged weights) loads its merged weights.

    Raises: NotFound (unknown, deleted, another workspace's, or its finetune failed or was
    cancelled); Conflict (a finetune of this workspace that has not completed yet)."""
    if _base(gw, model_id_) is not None:
        return ServedModel(id=model_id_, base_model=model_id_, adapter_uri=None)
    try:
        row = _fine_tuned(gw, workspace_id, model_id_)
    except NotFound:
        finetune_id = finetune_id_of(model_id_)
        if finetune_id is not None:
            with tx(gw.engine) as conn:
                ft = _finetune_or_none(conn, finetune_id, workspace_id)
            if ft is not None and not FS(ft["status"]).terminal:
                raise Conflict(f"model '{model_id_}' is not ready: its finetune is {ft['status']}") from None
        raise
    if row["adapter_uri"] is None:
        return ServedModel(id=row["id"], base_model=row["merged_uri"], adapter_uri=None)
    return ServedModel(id=row["id"], base_model=row["base_model"], adapter_uri=row["adapter_uri"])


def record_export(gw: Gateway, workspace_id: str, model_id_: str, merged_uri: str) -> ModelPublic:
    """Record merged weights an export wrote for a fine-tuned model (its size counts toward the model's).

    Raises: BadRequest (a base model); NotFound (unknown, deleted or another workspace's);
    Conflict (a full fine-tune: its weights are complete already)."""
    if _base(gw, model_id_) is not None:
        raise BadRequest(f"'{model_id_}' is a base model; only fine-tuned models can be exported")
    row = _fine_tuned(gw, workspace_id, model_id_)
    if row["adapter_uri"] is None:
        raise Conflict(f"model '{model_id_}' is a full fine-tune; its weights at {row['merged_uri']} need no merge")
    own = [uri for uri in (row["adapter_uri"], merged_uri) if uri]
    size = sum(o.size for uri in own for o in gw.store.list(uri))
    with tx(gw.engine) as conn:
        if not db.update_model(conn, model_id_, merged_uri=merged_uri, size_bytes=size):
            raise NotFound(f"model '{model_id_}' not found")
        db.add_event(conn, row["finetune_id"], EV.model, f"model {model_id_} exported to {merged_uri}",
                     data={"model": model_id_, "merged_uri": merged_uri})
        updated = db.get_model(conn, model_id_, workspace_id)
    assert updated is not None
    return db.model_public(updated)
