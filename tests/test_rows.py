"""One set of good and bad lines through every reader of a dataset: the gateway's validation, a
service's first-row peek and the training job's loader must give the same verdict, the same format
and the same message for each (common/rows.py holds the grammar they share)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from common.peek import dataset_problems
from common.rows import sft_row
from common.schemas import TrainingRequest, TrainingType
from common.settings import Settings
from common.storage import ObjectStore
from common.train.data import DatasetError, load_preference_datasets, load_sft_datasets
from common.validation import validate_stream
from tests.utils.factories import training_request

SFT, DPO = TrainingType.sft, TrainingType.dpo
LOADERS = {SFT: load_sft_datasets, DPO: load_preference_datasets}


def msgs(*turns: tuple[str, object]) -> list[dict[str, object]]:
    return [{"role": role, "content": content} for role, content in turns]


UA = msgs(("user", "u"), ("assistant", "a"))
# Each line as the bytes of a one-line file; str and dict rows are written as JSON text.
LINES: list[object] = [
    {"messages": UA},
    {"messages": msgs(("system", "s"), *UA[:1], ("assistant", "a"))},
    {"messages": msgs(("user", "x"))},
    {"messages": msgs(("bot", "x"), ("assistant", "y"))},
    {"messages": msgs(("user", None), ("assistant", "y"))},
    {"messages": ["not a message", {"role": "assistant", "content": "y"}]},
    {"messages": "x"},
    {"messages": []},
    {"messages": [{"role": "user", "content": "u", "name": "extra"}, {"role": "assistant", "content": "a"}]},
    {"prompt": "p", "completion": "c"},
    {"prompt": "", "completion": "c"},
    {"prompt": "p"},
    {"prompt": msgs(("user", "p")), "completion": "c"},
    {"prompt": msgs(("user", "p")), "completion": msgs(("assistant", "c"))},
    {"prompt": msgs(("user", "p")), "completion": msgs(("user", "c"))},
    {"text": "t"},
    {"text": 3},
    {"text": "   "},
    {"other": 1},
    {},
    {"prompt": "p", "chosen": "c", "rejected": "r"},
    {"prompt": "p", "chosen": "c"},
    {"prompt": "p", "chosen": "", "rejected": "r"},
    {"prompt": msgs(("user", "p")), "chosen": msgs(("assistant", "c")), "rejected": msgs(("assistant", "r"))},
    {"prompt": msgs(("user", "p")), "chosen": msgs(("assistant", "c")), "rejected": msgs(("user", "r"))},
    {"prompt": msgs(("user", "p")), "chosen": "c", "rejected": "r"},
    {"instruction": "i", "input": "x", "output": "o"},
    {"instruction": "i", "input": "", "output": "o"},
    {"instruction": "i", "output": "o"},
    {"instruction": "i", "input": "x"},
    {"instruction": "", "output": "o"},
    {"instruction": "i", "input": 3, "output": "o"},
    '{"messages": [',
    "[1, 2]",
    '"just a string"',
    "\ufeff" + json.dumps({"text": "after a byte-order mark"}),
    "[" * 5000 + "]" * 5000,
]


def encoded(line: object) -> bytes:
    return (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"


PRETTY = json.dumps([{"text": "a"}, {"text": "b"}], indent=2).encode()  # a JSON file, not JSONL
CASES = [*((encoded(line), line) for line in LINES), (b'{"text": "\xff\xfe"}\n', "not UTF-8"), (PRETTY, "pretty")]


def validator(data: bytes, training_type: TrainingType) -> tuple[str | None, str, str]:
    """(format, "", "") for a good line; (None, field, message) of its one error for a bad one."""
    report = validate_stream(io.BytesIO(data), training_type)
    if report.valid:
        return report.format, "", ""
    (issue,) = report.errors
    return None, issue.field, issue.message


def sentence(field: str, message: str) -> str:
    """The message as one sentence: a problem inside one message names its field apart."""
    return f"{field} {message}" if field and not message.startswith("'") and "(keys:" not in message else message


def loader(path: Path, training_type: TrainingType) -> tuple[str | None, str]:
    try:
        return LOADERS[training_type]([path])[2], ""
    except DatasetError as e:
        prefix = f"{path.name} line 1: "
        assert str(e).startswith(prefix), str(e)
        return None, str(e)[len(prefix):]


def peek(store: ObjectStore, path: Path, training_type: TrainingType) -> str | None:
    """The first-row check of a service: None when it lets the line through to the job."""
    request = TrainingRequest.model_validate(training_request("org/model", path.as_uri()))
    problems = dataset_problems(store, request, training_type)
    return problems[0] if problems else None


@pytest.mark.parametrize("training_type", [SFT, DPO])
@pytest.mark.parametrize(("data", "line"), CASES, ids=[repr(line)[:40] for _, line in CASES])
def test_validation_peek_and_the_job_agree(tmp_path: Path, training_type: TrainingType, data: bytes, line: object) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    fmt, field, message = validator(data, training_type)
    assert loader(path, training_type) == (fmt, sentence(field, message) if fmt is None else "")
    peeked = peek(ObjectStore(Settings(storage_root=tmp_path)), path, training_type)
    where = "datasets[0] (t.jsonl line 1): "
    if fmt is not None:
        assert peeked is None
    elif peeked is not None and "but this backend trains" in peeked:  # the line is of the other training type
        assert peeked.startswith(where) and validator(data, DPO if training_type == SFT else SFT)[0] is not None
    else:
        assert peeked == where + (f"{field}: {message}" if field else message)


def test_the_job_gets_messages_with_role_and_content_only() -> None:
    row = {"messages": [{"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "a"}]}
    assert sft_row(row) == ("messages", {"messages": UA})
    assert sft_row(row, normalize=False)[1]["messages"] is row["messages"]  # validation reads, never copies


def test_alpaca_rows_become_a_user_and_an_assistant_turn() -> None:
    assert sft_row({"instruction": "Reverse:", "input": "a b", "output": "b a"}) == (
        "messages", {"messages": msgs(("user", "Reverse:\n\na b"), ("assistant", "b a"))}
    )
    assert sft_row({"instruction": "Say hi", "input": "", "output": "hi"})[1]["messages"][0]["content"] == "Say hi"


def test_a_json_file_gets_one_error_that_says_jsonl_and_preference_rows_name_the_dpo_provider() -> None:
    report = validate_stream(io.BytesIO(PRETTY * 40), SFT)
    assert report.errors_total == 1 and report.errors[0].line == 1
    assert report.errors[0].message.startswith("the file must be JSONL: one JSON object per line")
    report = validate_stream(io.BytesIO(encoded({"prompt": "p", "chosen": "c", "rejected": "r"}) * 3), SFT)
    assert report.errors_total == 3 and "create the finetune with provider 'dpo'" in report.errors[0].message
