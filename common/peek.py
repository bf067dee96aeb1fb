"""Request-time peeks at the objects a training request names: cheap, bounded, never fatal.

A trainer service refuses at once what it can see is wrong: preference rows sent to an SFT
backend (or the reverse), or a base model of a family the backend cannot train. It reads only
the first row of each dataset (at most ``MAX_PEEK_BYTES``) and a model's ``config.json``.
Whatever cannot be read from the service (an S3 object behind the dataset's own credentials,
a hub id) is left to the job, which checks every row and loads the real model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common import components
from common.errors import BadRequest, StorageError
from common.rows import BOM, PARSERS, RowError, decode_line, parse_first_line
from common.schemas import TrainingRequest, TrainingType
from common.storage import ObjectStore

log = logging.getLogger("trainyard.peek")

MAX_PEEK_BYTES = 1024 * 1024
MAX_ADAPTER_CHAIN = 8
OTHER = {TrainingType.sft: TrainingType.dpo, TrainingType.dpo: TrainingType.sft}
DATA = {TrainingType.sft: "SFT data", TrainingType.dpo: "preference data"}


def advice(other: TrainingType) -> str:
    """Where data of the ``other`` training type trains, e.g. "preference data trains on the dpo backend"."""
    names = [c.name for c in components.of_kind(components.Kind.trainer) if c.training_type == other]
    return f"{DATA[other]} trains on the {' or '.join(names)} backend"


def first_line(store: ObjectStore, uri: str) -> tuple[int, bytes] | None:
    """(line number, bytes) of the first non-blank line; None when the object cannot be read here
    or that line is longer than ``MAX_PEEK_BYTES`` (the job reads it whole)."""
    try:
        with store.open(uri) as fh:
            head = fh.read(MAX_PEEK_BYTES)
    except (StorageError, BadRequest) as e:  # missing or refused: submit's own existence check reports it
        log.info("cannot peek at %s from the service (%s); the job will read it", uri, e.error)
        return None
    lines = head.split(b"\n")
    truncated = len(head) == MAX_PEEK_BYTES  # the last piece may be part of a longer line
    for line_no, raw in enumerate(lines, start=1):
        if truncated and line_no == len(lines):
            return None
        if raw.strip():
            return line_no, raw
    return None


def dataset_problems(store: ObjectStore, request: TrainingRequest, training_type: TrainingType) -> list[str]:
    """Datasets whose first row is not of ``training_type`` (naming the type it looks like instead)."""
    problems = []
    for i, ds in enumerate(request.datasets):
        name = ds.source.rstrip("/").rsplit("/", 1)[-1]
        found = first_line(store, ds.source)
        if found is None:
            continue
        line, raw = found
        where = f"datasets[{i}] ({name} line {line})"
        try:
            text = decode_line(raw)
            row = parse_first_line(text.lstrip(BOM) if line == 1 else text)
        except RowError as e:
            problems.append(f"{where}: {e.sentence}")
            continue
        try:
            PARSERS[training_type](row, normalize=False)
        except RowError as e:
            other = OTHER[training_type]
            try:
                PARSERS[other](row, normalize=False)
            except RowError:
                field = f"{e.field}: " if e.field else ""
                problems.append(f"{where}: {field}{e.message}")
            else:
                problems.append(
                    f"{where}: this is {other.value.upper()} data, but this backend trains "
                    f"{training_type.value.upper()} ({advice(other)})"
                )
    return problems


def model_config(store: ObjectStore, request: TrainingRequest) -> dict[str, Any] | None:
    """The base model's config.json when it is readable from here (local dir, file:// or s3:// prefix),
    following an adapter (an earlier job's output) to its base; None for a hub id or anything unreadable."""
    ref = request.base_model.weights_url or request.base_model.model_name
    for _ in range(MAX_ADAPTER_CHAIN + 1):
        adapter = _read_json(store, ref, "adapter_config.json")
        if adapter is None:
            return _read_json(store, ref, "config.json")
        base = adapter.get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            return None
        ref = base
    return None


def _read_json(store: ObjectStore, ref: str, name: str) -> dict[str, Any] | None:
    data: bytes | None = None
    if ref.startswith(("file://", "s3://")):
        try:
            data = store.get_bytes(store.join(ref.rstrip("/"), name))
        except (StorageError, BadRequest):
            return None
    else:
        base = Path(ref)
        if not base.is_absolute():
            return None  # a hub id: the job resolves it on the hub, never on disk
        path = base / name
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError:
            return None
    if data is None or len(data) > MAX_PEEK_BYTES:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
