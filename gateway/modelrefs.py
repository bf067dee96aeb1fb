"""Model references at the gateway: the shared rule (``common.modelrefs``) plus the one kind only the
gateway can resolve, a finetune of the caller's own workspace named by its id.

``resolve`` is the single place a finetune's ``model`` becomes what the trainer service loads;
a registry id (``ft:<finetune id>``) names the same output unless the model was deleted. Another
workspace's finetune, an unfinished one and an unknown id all get the same refusal as a path outside
the model directories.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import Connection

from common import modelrefs
from common.errors import NotFound
from common.schemas import FinetuneStatus
from common.settings import Settings
from gateway import db
from gateway.db import finetune_id_of

FINETUNE_ID_RE = re.compile(r"^ft-[0-9a-f]{12}$")


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
