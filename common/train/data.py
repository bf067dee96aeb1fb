"""JSONL datasets for training: read, validate row by row, normalize, split.

Every bad row fails the job with the file name and line number, because a user
fixes a dataset in an editor, not in a stack trace. Formats match TRL's dataset
types so rows pass to SFTTrainer/DPOTrainer unchanged:

* SFT: ``messages`` (chat), ``prompt``/``completion`` (strings, or message lists:
  TRL's conversational prompt-completion) or ``text``; one format per run.
* DPO: ``prompt``/``chosen``/``rejected`` (strings, or message lists).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

ROLES = frozenset({"system", "user", "assistant"})

# Format names, also the keys each normalized row carries.
SFT_FORMATS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "conversational_prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
DPO_FORMATS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "conversational_preference": ("prompt", "chosen", "rejected"),
}


class DatasetError(ValueError):
    """A dataset the job cannot use; the message names the file and line to fix."""


def _where(path: Path, line: int) -> str:
    return f"{path.name} line {line}"


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line.

    Raises:
        DatasetError: the file is unreadable, not UTF-8, or a line is not a JSON object.
    """
    try:
        fh = path.open("rb")  # binary, so a decoding error is pinned to its line
    except OSError as e:
        raise DatasetError(f"{path.name}: cannot read dataset file ({e.strerror})") from e
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{_where(path, line_no)}: not valid UTF-8") from e
            if line_no == 1:
                line = line.lstrip("\ufeff")  # byte-order mark from some editors
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{_where(path, line_no)}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise DatasetError(f"{_where(path, line_no)}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _messages(value: Any, where: str, field: str, *, last_assistant: bool) -> list[dict[str, str]]:
    """Validate a chat message list and keep only role/content (extra keys break Arrow schemas)."""
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: '{field}' must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise DatasetError(f"{where}: {field}[{i}] must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DatasetError(
                f"{where}: {field}[{i}].role must be one of {', '.join(sorted(ROLES))}, got {role!r}"
            )
        if not isinstance(content, str):
            raise DatasetError(f"{where}: {field}[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if last_assistant and out[-1]["role"] != "assistant":
        raise DatasetError(f"{where}: '{field}' must end with an assistant message")
    return out


def _string(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: '{field}' must be a non-empty string")
    return value


def _sft_row(row: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(format, normalized row) of one SFT row."""
    if "messages" in row:
        return "messages", {"messages": _messages(row["messages"], where, "messages", last_assistant=True)}
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) or isinstance(completion, list):
            return "conversational_prompt_completion", {
                "prompt": _messages(prompt, where, "prompt", last_assistant=False),
                "completion": _messages(completion, where, "completion", last_assistant=True),
            }
        return "prompt_completion", {
            "prompt": _string(prompt, where, "prompt"),
            "completion": _string(completion, where, "completion"),
        }
    if "text" in row:
        return "text", {"text": _string(row["text"], where, "text")}
    keys = ", ".join(sorted(row)) or "none"
    raise DatasetError(
        f"{where}: unknown row format (keys: {keys}); expected 'messages', "
        "'prompt' + 'completion', or 'text'"
    )


def _dpo_row(row: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(format, normalized row) of one preference row."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        keys = ", ".join(sorted(row)) or "none"
        raise DatasetError(
            f"{where}: unknown row format (keys: {keys}); preference rows need "
            "'prompt', 'chosen' and 'rejected'"
        )
    if any(isinstance(row[k], list) for k in ("prompt", "chosen", "rejected")):
        return "conversational_preference", {
            "prompt": _messages(row["prompt"], where, "prompt", last_assistant=False),
            "chosen": _messages(row["chosen"], where, "chosen", last_assistant=True),
            "rejected": _messages(row["rejected"], where, "rejected", last_assistant=True),
        }
    return "preference", {k: _string(row[k], where, k) for k in ("prompt", "chosen", "rejected")}


def _load(
    files: Sequence[Path], parse: Any, fmt: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of all ``files``, all in one format (``fmt`` if already fixed by earlier files)."""
    rows: list[dict[str, Any]] = []
    first: str | None = None
    for path in files:
        for line_no, raw in read_jsonl(path):
            where = _where(path, line_no)
            row_fmt, row = parse(raw, where)
            if fmt is None:
                fmt, first = row_fmt, where
            elif row_fmt != fmt:
                since = f" (first row, {first})" if first else ""
                raise DatasetError(
                    f"{where}: row is in '{row_fmt}' format but this run's data is '{fmt}'{since}; "
                    "all rows of one run must share a format"
                )
            rows.append(row)
    return rows, fmt


def _split(
    rows: list[dict[str, Any]], validation_split: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded hold-out: at least one validation row when split > 0 and there are >= 2 rows."""
    if validation_split <= 0 or len(rows) < 2:
        return rows, []
    n_val = min(len(rows) - 1, max(1, round(len(rows) * validation_split)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [rows[i] for i in sorted(val)]


def _datasets(
    train_files: Sequence[Path],
    validation_files: Sequence[Path],
    validation_split: float,
    seed: int,
    parse: Any,
) -> tuple[Dataset, Dataset | None, str]:
    if not train_files:
        raise DatasetError("no training dataset was given")
    train, fmt = _load(train_files, parse, None)
    if not train:
        raise DatasetError(f"{', '.join(p.name for p in train_files)}: no rows (the file is empty)")
    if validation_files:
        val, fmt = _load(validation_files, parse, fmt)
        if not val:
            names = ", ".join(p.name for p in validation_files)
            raise DatasetError(f"{names}: no rows (the validation file is empty)")
    else:
        train, val = _split(train, validation_split, seed)
    assert fmt is not None
    from datasets import Dataset  # imported late: a bad row should fail before this 2-second import

    return Dataset.from_list(train), (Dataset.from_list(val) if val else None), fmt


def load_sft_datasets(
    train_files: Sequence[Path],
    validation_files: Sequence[Path] = (),
    *,
    validation_split: float = 0.0,
    seed: int = 42,
) -> tuple[Dataset, Dataset | None, str]:
    """(train, validation or None, format) for supervised fine-tuning.

    Raises:
        DatasetError: a bad row (file + line named), mixed formats, or no rows.
    """
    return _datasets(train_files, validation_files, validation_split, seed, _sft_row)


def load_preference_datasets(
    train_files: Sequence[Path],
    validation_files: Sequence[Path] = (),
    *,
    validation_split: float = 0.0,
    seed: int = 42,
) -> tuple[Dataset, Dataset | None, str]:
    """(train, validation or None, format) of prompt/chosen/rejected rows for DPO.

    Raises:
        DatasetError: a bad row (file + line named), mixed formats, or no rows.
    """
    return _datasets(train_files, validation_files, validation_split, seed, _dpo_row)
