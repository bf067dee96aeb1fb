"""Which base models a request may name: the one rule, used by the gateway and the trainer services.

A model reference is allowed when it is

* a hub id: ``name`` or ``org/name`` of letters, digits, ``.``, ``_``, ``-`` (no scheme, no
  ``..``, no leading ``/``, ``.`` or ``~``), which the job resolves on the hub, never on disk;
* an absolute path under one of ``TRAINYARD_MODEL_DIRS`` (after ``..`` and symlinks; ``~`` is
  never expanded);
* at the gateway, the id of one of the caller's workspace's completed finetunes, which the gateway
  resolves to that finetune's output URI (``gateway.models``); only a trainer service, which only
  the gateway calls, accepts such a storage URI directly (``file://`` confined to the storage
  root, ``s3://``).

Everything else is refused with one message that says nothing about the file system: the same
text whether a path exists or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from common.errors import BadRequest, Unprocessable
from common.settings import Settings
from common.storage import ObjectStore

ADAPTER_CONFIG = "adapter_config.json"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
REFUSED = (
    "not an allowed model: use a hub id (org/name), a path under the configured model directories, "
    "or the id of one of this workspace's completed finetunes"
)


class ModelRefused(Unprocessable):
    """The request names a model the rule above does not allow (detail names the field)."""

    error = "model_refused"


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID_RE.match(ref)) and ".." not in ref


def in_model_dirs(ref: str, model_dirs: Iterable[Path]) -> bool:
    """``ref`` is an absolute path that stays under one of ``model_dirs`` once resolved."""
    if not ref.startswith("/"):
        return False
    try:
        resolved = Path(ref).resolve()
        roots = [Path(d).resolve() for d in model_dirs]
    except (OSError, ValueError, RuntimeError):
        return False
    return any(resolved == root or root in resolved.parents for root in roots)


def looks_like_model(path: Path) -> bool:
    """A directory ``from_pretrained`` can load: a checkpoint, an adapter, or GGUF weights."""
    try:
        return path.is_dir() and (
            (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file() or any(path.glob("*.gguf"))
        )
    except OSError:
        return False


def refuse(field: str) -> ModelRefused:
    return ModelRefused(f"{field}: {REFUSED}")


def check_named(ref: str, settings: Settings, *, field: str) -> str:
    """A reference a user typed: a hub id or a path under the model directories.

    Raises:
        ModelRefused: anything else (one message, naming ``field`` only).
    """
    if is_hub_id(ref) or in_model_dirs(ref, settings.model_dirs):
        return ref
    raise refuse(field)


def check_resolved(ref: str, settings: Settings, store: ObjectStore, *, field: str) -> str:
    """A reference a trainer service receives: what ``check_named`` allows, or a storage URI
    (what the gateway resolves a finetune id to).

    Raises:
        ModelRefused: anything else (one message, naming ``field`` only).
    """
    if ref.startswith(("file://", "s3://")):
        try:
            store.check(ref)
        except BadRequest:
            raise refuse(field) from None
        return ref
    return check_named(ref, settings, field=field)
