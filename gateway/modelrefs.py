"""Model references at the gateway: the shared rule (``common.modelrefs``) plus the one kind only the
gateway can resolve, a finetune of the caller's own workspace named by its id.

``resolve`` is the single place a finetune's ``model`` becomes what the trainer service loads;
a registry id (``ft:<finetune id>``) names the same output unless the model was deleted. Another
workspace's finetune, an unfinished one and an unknown id all get the same refusal as a path outside
the model directories.

A named model must also exist, so a typo fails when the finetune is created, not when its job
starts: a catalog id always does; a path must be a model directory (a missing path gets the same
refusal as a forbidden one, revealing nothing about the file system); any other hub id is looked up
on the hub (``gateway.hub``) unless ``model_hub_check`` is off.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import Connection

from common import catalog, modelrefs
from common.errors import NotFound
from common.schemas import FinetuneStatus
from common.settings import Settings
from gateway import db, hub
from gateway.db import finetune_id_of

FINETUNE_ID_RE = re.compile(r"^ft-[0-9a-f]{12}$")
HUB_UNREACHABLE = (
    "{field}: '{ref}': no such local model directory, and not a hub id that can be reached "
    "(use a base-model catalog id from GET /v1/models, or a path under the configured model directories)"
)
HUB_MISSING = (
    "{field}: '{ref}' is not a model on the hub, nor a base-model catalog id (GET /v1/models) or a path "
    "under the configured model directories; check its spelling (a private model needs virtual_key)"
)


def resolve(conn: Connection, settings: Settings, ref: str, workspace_id: str, *, field: str = "model") -> str:
    """What the trainer service is sent for ``ref``: a hub id or model-directory path as given, or
    the output URI of the workspace's completed finetune ``ref`` (by finetune id or model id).

    Raises:
        ModelRefused: anything else (one message, naming ``field`` only).
    """
    registered = finetune_id_of(ref)
    if registered is not None:
        deleted = db.get_model(conn, ref, workspace_id, deleted=True)
        if deleted is not None and deleted["deleted_at"] is not None:
            raise modelrefs.refuse(field)
        ref = registered
    if FINETUNE_ID_RE.match(ref):
        try:
            row = db.get_finetune(conn, ref, workspace_id)
        except NotFound:
            raise modelrefs.refuse(field) from None
        if row["status"] != FinetuneStatus.completed.value or not row["output_uri"]:
            raise modelrefs.refuse(field)
        return str(row["output_uri"])
    return modelrefs.check_named(ref, settings, field=field)


def check_exists(ref: str, settings: Settings, *, field: str = "model", token: str | None = None) -> None:
    """A named model (catalog id, path, hub id) exists: see the module docstring. Called before
    ``resolve`` and outside any transaction (it may wait for the hub); finetune ids and refs the rule
    refuses are left to ``resolve``. ``token`` reads private hub models.

    Raises:
        ModelRefused: a path that is no model directory; a hub id the hub does not know or that
            cannot be checked (no hub reachable) while ``model_hub_check`` is on.
    """
    if finetune_id_of(ref) is not None or FINETUNE_ID_RE.match(ref) or catalog.resolve(ref, settings) is not None:
        return
    if modelrefs.in_model_dirs(ref, settings.model_dirs):
        if not modelrefs.looks_like_model(Path(ref)):
            raise modelrefs.refuse(field)
        return
    if not modelrefs.is_hub_id(ref) or not settings.model_hub_check:
        return
    answer = hub.lookup(ref, token)
    if answer == hub.HubAnswer.missing:
        raise modelrefs.ModelRefused(HUB_MISSING.format(field=field, ref=ref))
    if answer == hub.HubAnswer.unreachable:
        raise modelrefs.ModelRefused(HUB_UNREACHABLE.format(field=field, ref=ref))
