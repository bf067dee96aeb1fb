"""A job's resources as a runner reads them from its stored request, defaults from the schema.

A stored request was validated on submission, so it is read without validating it again; a
field it lacks takes ``common.schemas.Resources``' default, the one place defaults are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.schemas import Resources


def job_resources(request: Mapping[str, Any] | None) -> Resources:
    """``request["resources"]`` with the schema's defaults for what it leaves out."""
    return Resources.model_construct(**((request or {}).get("resources") or {}))


def max_duration_seconds(request: Mapping[str, Any] | None) -> float:
    """How long the job may run: resources.max_duration_minutes, in seconds."""
    return float(job_resources(request).max_duration_minutes) * 60
