"""A dataset file's validation report: what the gateway's validation finds and shows with a dataset
and a finetune."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.schemas.training import TrainingType


class ValidationIssue(BaseModel):
    line: int = Field(description="1-based line of the file; 0 for the file as a whole.")
    field: str = Field(description="The offending field, e.g. messages[2].role; '' for the row.")
    message: str


class TokenStats(BaseModel):
    tokenizer: str = Field(description="Where the tokenizer came from.")
    total: int
    max: int
    mean: float
    over_limit_rows: int = Field(description="Rows longer than the limit (each also listed as an error).")
    limit: int
    approximate: bool = Field(
        True, description="Counts are content tokens plus a fixed allowance per chat message for the template."
    )
    counted_rows: int = Field(0, description="Rows tokenized: a sample, plus every row long enough to break the limit.")
    estimated_rows: int = Field(0, description="Rows too short to break the limit, counted at the sample's tokens per byte.")


class ValidationReport(BaseModel):
    """One file's validation: totals plus the first ``max_errors`` problems by line."""

    valid: bool
    training_type: TrainingType
    format: str | None = Field(None, description="Row format found (messages, prompt_completion, text, preference, ...).")
    rows: int = 0
    bytes: int = 0
    errors: list[ValidationIssue] = Field(default_factory=list)
    errors_total: int = 0
    errors_truncated: bool = False
    tokens: TokenStats | None = None
    token_note: str | None = Field(None, description="Why tokens were not counted, when they were not.")
    duration_seconds: float = 0.0

