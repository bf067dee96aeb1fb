"""JSONL datasets for training: read, validate row by row, normalize, split.

Every bad row fails the job with the file name and line number, because a user
fixes a dataset in an editor, not in a stack trace. The row grammar (formats,
roles, messages) is ``common.rows``, the one the gateway's validation applies;
this module adds the file and line, one format per run, and the split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import rows

if TYPE_CHECKING:
    from datasets import Dataset


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
    seen = False  # a non-blank line was read
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = rows.decode_line(raw.rstrip(b"\r\n"))
                if line_no == 1:
                    line = line.lstrip(rows.BOM)
                if not line.strip():
                    continue
                yield line_no, (rows.parse_line(line) if seen else rows.parse_first_line(line))
                seen = True
            except rows.RowError as e:
                raise DatasetError(f"{_where(path, line_no)}: {e.sentence}") from e


def _load(
    files: Sequence[Path], parse: Any, fmt: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of all ``files``, all in one format (``fmt`` if already fixed by earlier files)."""
    out: list[dict[str, Any]] = []
    first: str | None = None
    for path in files:
        for line_no, raw in read_jsonl(path):
            where = _where(path, line_no)
            try:
                row_fmt, row = parse(raw)
            except rows.RowError as e:
                raise DatasetError(f"{where}: {e.sentence}") from e
            if fmt is None:
                fmt, first = row_fmt, where
            elif row_fmt != fmt:
                since = f" (first row, {first})" if first else ""
                raise DatasetError(
                    f"{where}: row is in '{row_fmt}' format but this run's data is '{fmt}'{since}; "
                    "all rows of one run must share a format"
                )
            out.append(row)
    return out, fmt


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
    return _datasets(train_files, validation_files, validation_split, seed, rows.sft_row)


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
    return _datasets(train_files, validation_files, validation_split, seed, rows.dpo_row)
