"""Unknown-field messages that name the field meant: "unknown field 'n_epochs'; did you mean 'epochs'?".

Request models forbid extra fields, and pydantic's "Extra inputs are not permitted" says neither
which fields exist nor which one was meant. The error handlers (``common.errors``,
``common.openai_errors``) pass each ``extra_forbidden`` error here with the route that raised it;
this walks the error's location through the route's body model to the model holding the field
and compares the name with that model's fields, so the hint works on every route without any
route naming its fields.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

EXTRA_FORBIDDEN = "extra_forbidden"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return []
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(m for m in _models(arg) if m not in out)
    return out


def _names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _holders(route: Any, loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The models that may hold the field at ``loc`` (``("body", ..., field)``), following the body model."""
    params = list(getattr(getattr(route, "dependant", None), "body_params", None) or [])
    if not params:
        return []
    parts = list(loc[1:-1])
    chosen = [p for p in params if parts and p.name == parts[0]] if len(params) > 1 else []
    if chosen:  # several body parameters: the body is an object keyed by their names
        parts = parts[1:]
    current: list[type[BaseModel]] = []
    for p in chosen or params:
        current.extend(_models(p.field_info.annotation))
    for part in parts:
        if isinstance(part, int):
            continue  # an item of a list: its models are already the list's
        following = [
            m for model in current if (field := _field(model, part)) is not None for m in _models(field.annotation)
        ]
        if following:
            current = following
        # else a union's tag or a dict key in the location: the same models go on
    return current


def _field(model: type[BaseModel], name: str) -> Any:
    for key, field in model.model_fields.items():
        if name in (key, field.alias):
            return field
    return None


def unknown_field_message(route: Any, loc: tuple[Any, ...]) -> str | None:
    """The message for an extra field at ``loc`` on ``route``; None when its model cannot be found."""
    if len(loc) < 2 or loc[0] != "body":
        return None
    field = str(loc[-1])
    names = sorted({n for model in _holders(route, loc) for n in _names(model)})
    if not names:
        return None
    match = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
    if match:
        return f"unknown field '{field}'; did you mean '{match[0]}'?"
    return f"unknown field '{field}'; the fields here are: {', '.join(names)}"


def explain(errors: Any, route: Any) -> list[dict[str, Any]]:
    """Pydantic's errors with each ``extra_forbidden`` message replaced by the hint (the rest unchanged)."""
    out = []
    for err in errors:
        if err.get("type") == EXTRA_FORBIDDEN and (msg := unknown_field_message(route, tuple(err.get("loc", ())))):
            err = {**err, "msg": msg}
        out.append(err)
    return out
