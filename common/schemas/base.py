"""What every contract builds on: the size caps of request fields, the constrained string types, the
``Strict`` base of request models, and the bodies every face shares (``ErrorBody``, ``Health``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, SecretStr

# Size caps of request fields (docs/security.md lists them; the API spec shows each on its field).
MAX_URI_CHARS = 2048
MAX_MODEL_REF_CHARS = 1024
MAX_NAME_CHARS = 255
MAX_SECRET_CHARS = 8192
MAX_LIST_ITEMS = 64
MAX_MODULE_NAME_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 255
MAX_DICT_ITEMS = 32
MAX_REPORT_MESSAGE_CHARS = 4096
MAX_REPORT_ITEMS = 64
MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1
MAX_QUERY_INT = 2**31 - 1  # offsets and event cursors: far past any real list, well inside a 64-bit column
STORAGE_URI_PATTERN = r"^(file|s3)://"
HTTP_URL_PATTERN = r"^https?://"

StorageUri = Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS, pattern=STORAGE_URI_PATTERN)]
HttpUrl = Annotated[str, Field(max_length=MAX_URI_CHARS, pattern=HTTP_URL_PATTERN)]
ModuleName = Annotated[str, Field(min_length=1, max_length=MAX_MODULE_NAME_CHARS)]
ModuleNames = Annotated[list[ModuleName], Field(max_length=MAX_LIST_ITEMS)]
Secret = Annotated[SecretStr, Field(max_length=MAX_SECRET_CHARS)]
Labels = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_LABEL_VALUE_CHARS)],
    ],
    Field(max_length=MAX_LABELS),
]


def no_dot_dot(v: str | None) -> str | None:
    """Refuse ``..`` segments, also percent-encoded, so a URI never climbs out of its prefix."""
    if v is not None and any(unquote(seg) == ".." for seg in v.split("/")):
        raise ValueError("must not contain '..' segments (also not encoded as %2e%2e)")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["healthy", "starting"] = Field(
        "healthy", description="'starting' while a trainer service still checks that its backend loads; "
        "it answers requests meanwhile (POST /train waits for the check)."
    )
    version: str


class ErrorBody(BaseModel):
    error: str
    detail: Any
    status_code: int
