"""Dataset loading: every accepted format, every rejection names file and line, seeded splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.train.data import DatasetError, load_preference_datasets, load_sft_datasets


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def test_messages_format_normalized(tmp_path: Path) -> None:
    row = chat(0)
    row["messages"][1]["name"] = "extra key dropped"
    row["id"] = 7
    train, val, fmt = load_sft_datasets([write_jsonl(tmp_path / "t.jsonl", [row, chat(1)])])
    assert fmt == "messages"
    assert val is None
    assert train.column_names == ["messages"]
    assert train[0]["messages"][1] == {"role": "user", "content": "question 0"}


@pytest.mark.parametrize(
    ("row", "fmt", "columns"),
    [
        ({"prompt": "2+2=", "completion": "4"}, "prompt_completion", ["prompt", "completion"]),
        (
            {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]},
            "conversational_prompt_completion",
            ["prompt", "completion"],
        ),
        ({"text": "plain text"}, "text", ["text"]),
    ],
)
def test_other_sft_formats(tmp_path: Path, row: dict[str, Any], fmt: str, columns: list[str]) -> None:
    train, _, got = load_sft_datasets([write_jsonl(tmp_path / "t.jsonl", [row])])
    assert got == fmt
    assert train.column_names == columns


def test_blank_lines_skipped_but_line_numbers_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [chat(0), "", "   ", {"messages": []}])
    with pytest.raises(DatasetError, match=r"t\.jsonl line 4: 'messages' must be a non-empty list"):
        load_sft_datasets([path])


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ('{"messages": [', r"line 2: invalid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object, got list"),
        ({"question": "q", "answer": "a"}, r"line 2: unknown row format \(keys: answer, question\)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"line 2: 'messages' must end with an assistant message"),
        (
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            r"line 2: messages\[0\]\.role must be one of assistant, system, user; got 'robot'",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
            r"line 2: messages\[0\]\.content must be a string",
        ),
        ({"text": ""}, r"line 2: 'text' must be a non-empty string"),
        ({"text": "a valid row, but not chat"}, r"line 2: row is in 'text' format but this run's data is 'messages'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, bad: Any, pattern: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0), bad, chat(2)])
    with pytest.raises(DatasetError, match=r"train\.jsonl " + pattern):
        load_sft_datasets([path])


def test_validation_file_must_match_train_format(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(0)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DatasetError, match=r"val\.jsonl line 1: row is in 'prompt_completion' format"):
        load_sft_datasets([train], [val])


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(chat(0)).encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DatasetError, match=r"t\.jsonl line 2: not valid UTF-8"):
        load_sft_datasets([path])


def test_empty_files(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DatasetError, match=r"empty\.jsonl: no rows"):
        load_sft_datasets([empty])
    train = write_jsonl(tmp_path / "train.jsonl", [chat(0)])
    with pytest.raises(DatasetError, match=r"empty\.jsonl: no rows \(the validation file is empty\)"):
        load_sft_datasets([train], [empty])
    with pytest.raises(DatasetError, match="no training dataset"):
        load_sft_datasets([])


def test_validation_file_used_as_is(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(10)])
    val = write_jsonl(tmp_path / "val.jsonl", [chat(i) for i in range(3)])
    tr, va, _ = load_sft_datasets([train], [val], validation_split=0.2)
    assert (len(tr), len(va)) == (10, 3)


@pytest.mark.parametrize(("rows", "split", "expected"), [(20, 0.1, (18, 2)), (5, 0.1, (4, 1)), (2, 0.4, (1, 1))])
def test_split_sizes(tmp_path: Path, rows: int, split: float, expected: tuple[int, int]) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [chat(i) for i in range(rows)])
    tr, va, _ = load_sft_datasets([path], validation_split=split)
    assert va is not None
    assert (len(tr), len(va)) == expected


def test_no_split_when_zero_or_single_row(tmp_path: Path) -> None:
    many = write_jsonl(tmp_path / "many.jsonl", [chat(i) for i in range(10)])
    one = write_jsonl(tmp_path / "one.jsonl", [chat(0)])
    assert load_sft_datasets([many], validation_split=0.0)[1] is None
    tr, va, _ = load_sft_datasets([one], validation_split=0.3)
    assert (len(tr), va) == (1, None)


def test_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [chat(i) for i in range(30)])

    def val_questions(seed: int) -> list[str]:
        _, va, _ = load_sft_datasets([path], validation_split=0.2, seed=seed)
        assert va is not None
        return [r["messages"][1]["content"] for r in va]

    assert val_questions(1) == val_questions(1)
    assert val_questions(1) != val_questions(2)
    tr, va, _ = load_sft_datasets([path], validation_split=0.2, seed=1)
    assert va is not None
    train_q = {r["messages"][1]["content"] for r in tr}
    assert train_q.isdisjoint(val_questions(1))
    assert len(train_q) + len(va) == 30


def test_several_train_files_concatenate(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [chat(0), chat(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(2)])
    tr, _, _ = load_sft_datasets([a, b])
    assert len(tr) == 3


def test_preference_rows(tmp_path: Path) -> None:
    strings = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 4)
    tr, va, fmt = load_preference_datasets([strings], validation_split=0.25)
    assert fmt == "preference"
    assert tr.column_names == ["prompt", "chosen", "rejected"]
    assert (len(tr), len(va or [])) == (3, 1)

    conv = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    _, _, fmt = load_preference_datasets([write_jsonl(tmp_path / "c.jsonl", [conv])])
    assert fmt == "conversational_preference"


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({"prompt": "p", "chosen": "c"}, r"line 2: unknown row format \(keys: chosen, prompt\); preference rows need"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, r"line 2: 'chosen' must be a non-empty string"),
        (
            {"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": "r"},
            r"line 2: 'chosen' must be a non-empty list of messages",
        ),
    ],
)
def test_bad_preference_rows(tmp_path: Path, bad: dict[str, Any], pattern: str) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, bad])
    with pytest.raises(DatasetError, match=r"prefs\.jsonl " + pattern):
        load_preference_datasets([path])
