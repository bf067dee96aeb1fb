"""common/validation.py: formats, errors by line and field, caps, limits, token counts, flat memory
(agreement with the training program's loader: tests/test_rows.py)."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from common.schemas import TrainingType
from common.validation import Limits, Stopped, load_tokenizer, validate_stream

REPO = Path(__file__).resolve().parents[1]
SFT, DPO = TrainingType.sft, TrainingType.dpo


def lines(*rows: object) -> io.BytesIO:
    return io.BytesIO("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode())


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD_CHAT = chat(("user", "hi"), ("assistant", "hello"))


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (GOOD_CHAT, "messages"),
        (chat(("system", "s"), ("user", "u"), ("assistant", "a"), ("user", "u2"), ("assistant", "a2")), "messages"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "c"}]},
         "conversational_prompt_completion"),
        ({"text": "plain text"}, "text"),
    ],
)
def test_sft_formats_are_recognised(row: dict, fmt: str) -> None:
    report = validate_stream(lines(row, row), SFT)
    assert report.valid and report.format == fmt and report.rows == 2 and report.errors == []


def test_dpo_formats_are_recognised() -> None:
    assert validate_stream(lines({"prompt": "p", "chosen": "c", "rejected": "r"}), DPO).format == "preference"
    conv = {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "c"}],
            "rejected": [{"role": "assistant", "content": "r"}]}
    assert validate_stream(lines(conv), DPO).format == "conversational_preference"
    report = validate_stream(lines(GOOD_CHAT, {"prompt": "p", "chosen": "c"}), DPO)
    assert [(e.line, e.field) for e in report.errors] == [(1, "prompt"), (2, "rejected")]


def test_errors_name_the_line_and_field() -> None:
    report = validate_stream(
        lines(
            GOOD_CHAT,                                                    # 1
            "",                                                           # 2 blank, skipped
            "{oops",                                                      # 3
            chat(("user", "no reply")),                                   # 4
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},  # 5
            {"messages": []},                                             # 6
            {"messages": ["not a dict", {"role": "assistant", "content": "x"}]},  # 7
            {"prompt": "p", "completion": "  "},                          # 8
            "42",                                                         # 9
            {"text": "t"},                                                # 10 other format
            {"unknown": 1},                                               # 11
        ),
        SFT,
    )
    got = [(e.line, e.field) for e in report.errors]
    assert got == [(3, ""), (4, "messages[0].role"), (5, "messages[0].content"), (6, "messages"),
                   (7, "messages[0]"), (8, "completion"), (9, ""), (10, ""), (11, "")]
    assert report.errors_total == 9 and not report.valid and report.format == "messages"
    assert "column 2" in report.errors[0].message and "got int" in report.errors[6].message
    assert "line 1" in report.errors[7].message  # where the file's format was set


def test_error_list_is_capped_to_the_lowest_lines_but_all_are_counted() -> None:
    report = validate_stream(io.BytesIO(b"{bad\n" * 1000), SFT, limits=Limits(max_errors=10))
    assert report.errors_total == 1000 and report.errors_truncated
    assert [e.line for e in report.errors] == list(range(1, 11))


def test_limits_rows_line_length_encoding_and_empty_files() -> None:
    report = validate_stream(lines(*[GOOD_CHAT] * 5), SFT, limits=Limits(max_rows=3))
    assert report.rows == 3 and report.errors[0].line == 4 and "max_rows=3" in report.errors[0].message
    long_row = json.dumps({"text": "x" * 5000})
    report = validate_stream(lines(GOOD_CHAT, long_row, GOOD_CHAT), SFT, limits=Limits(max_line_bytes=1000))
    assert [(e.line, "longer than 1000 bytes" in e.message) for e in report.errors] == [(2, True)]
    assert report.rows == 2
    bad_utf8 = json.dumps(GOOD_CHAT).encode() + b"\n" + b'{"text": "\xff\xfe"}\n' + json.dumps(GOOD_CHAT).encode()
    report = validate_stream(io.BytesIO(bad_utf8), SFT)
    assert [(e.line, "UTF-8" in e.message) for e in report.errors] == [(2, True)] and report.rows == 2
    assert validate_stream(io.BytesIO(b""), SFT).errors[0].message == "the file has no rows"
    assert not validate_stream(io.BytesIO(b"\n \n"), SFT).valid
    # a last line without a newline still counts; Windows line ends are fine
    assert validate_stream(io.BytesIO(json.dumps(GOOD_CHAT).encode()), SFT).rows == 1
    assert validate_stream(io.BytesIO((json.dumps(GOOD_CHAT) + "\r\n").encode() * 3), SFT).valid


def test_lines_spanning_read_blocks_are_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.validation as validation

    monkeypatch.setattr(validation, "BLOCK_SIZE", 7)  # every row spans several reads
    rows = [chat(("user", f"question {i} é"), ("assistant", f"answer {i} ü")) for i in range(50)]
    report = validate_stream(lines(*rows, "{bad"), SFT)
    assert report.rows == 50 and [e.line for e in report.errors] == [51]
    report = validate_stream(lines(GOOD_CHAT, {"text": "y" * 300}, GOOD_CHAT), SFT, limits=Limits(max_line_bytes=120))
    assert [e.line for e in report.errors] == [2] and report.rows == 2  # an over-long line is skipped unbuffered


def test_token_counts_with_the_base_models_tokenizer(tiny_model: Path) -> None:
    tokenizer, name = load_tokenizer(str(tiny_model))
    assert tokenizer is not None and name == str(tiny_model)
    data = (REPO / "examples" / "sft" / "train.jsonl").read_bytes()
    long_row = chat(("user", "word " * 300), ("assistant", "ok"))
    report = validate_stream(io.BytesIO(data + (json.dumps(long_row) + "\n").encode()), SFT, tokenizer=tokenizer,
                             tokenizer_name=name, limits=Limits(max_sequence_length=128, token_sample_rows=50))
    stats = report.tokens
    assert stats is not None and stats.tokenizer == name and stats.limit == 128
    assert stats.over_limit_rows == 1 and stats.max > 128 and report.errors[0].line == 321
    assert stats.counted_rows == 51 and stats.estimated_rows == 270  # the sample + the one row that could be long
    exact = validate_stream(io.BytesIO(data), SFT, tokenizer=tokenizer, limits=Limits(token_sample_rows=10**6)).tokens
    sampled = validate_stream(io.BytesIO(data), SFT, tokenizer=tokenizer, limits=Limits(token_sample_rows=50)).tokens
    assert exact.counted_rows == 320 and abs(sampled.total - exact.total) / exact.total < 0.05
    encoded = tokenizer.encode("reverse: goat sheep", add_special_tokens=False)
    assert 1 < len(encoded) < 20


def test_tokenizers_that_cannot_be_loaded_only_skip_token_counts(tmp_path: Path) -> None:
    for model in (str(tmp_path), str(tmp_path / "missing"), "./nowhere"):
        tokenizer, note = load_tokenizer(model)
        assert tokenizer is None and note.startswith("token counts skipped")
    report = validate_stream(lines(GOOD_CHAT), SFT, token_note="token counts skipped: x")
    assert report.valid and report.tokens is None and report.token_note == "token counts skipped: x"


def test_an_adapter_directory_points_to_its_base_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model)}))
    tokenizer, name = load_tokenizer(str(tmp_path))
    assert tokenizer is not None and name == str(tiny_model)


def test_memory_stays_flat_on_a_large_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.validation as validation

    monkeypatch.setattr(validation, "BLOCK_SIZE", 256 * 1024)  # a smaller block makes the bound sharper
    row = (json.dumps(chat(("user", "a question " * 20), ("assistant", "an answer " * 20))) + "\n").encode()

    class Generated(io.RawIOBase):  # 24 MiB of rows, produced as read: the input itself costs no memory
        def __init__(self, total: int) -> None:
            self.left = total

        def read(self, n: int = -1) -> bytes:
            k = min(n, self.left) // len(row)
            self.left -= k * len(row)
            return row * k

    tracemalloc.start()
    report = validate_stream(Generated(24 * 1024 * 1024), SFT)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.valid and report.bytes > 23 * 1024 * 1024
    assert peak < 3 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 24 MiB stream"


def test_a_progress_callback_can_stop_a_validation() -> None:
    def stop(_: int) -> None:
        raise Stopped

    with pytest.raises(Stopped):
        validate_stream(lines(GOOD_CHAT), SFT, on_progress=stop)
