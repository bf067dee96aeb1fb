"""The grammar of a dataset row, written once for every reader of a JSONL dataset.

The gateway's validation (``common.validation``), a service's first-row peek (``common.peek``)
and the training job's loader (``common.train.data``) all decide here whether a line is a row
and which format it is in, so they cannot disagree about the same file. Formats match TRL's
dataset types, so normalised rows pass to SFTTrainer/DPOTrainer unchanged:

* SFT: ``messages`` (chat), ``prompt``/``completion`` (strings, or message lists: TRL's
  conversational prompt-completion) or ``text``; Alpaca rows (``instruction``, optional ``input``,
  ``output``) are read as ``messages``: instruction and input as the user turn, output as the
  assistant's;
* DPO: ``prompt``/``chosen``/``rejected`` (strings, or message lists).

Messages have a role of system/user/assistant and string content; a completion, a chat and a
preference answer end with an assistant turn. Every problem is a ``RowError``; callers add
where it is (a line number, a file and line). Torch-free: the API processes use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from common.schemas import TrainingType

ROLES = frozenset({"system", "user", "assistant"})
PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
JSONL_ONLY = (
    "the file must be JSONL: one JSON object per line; this looks like a JSON array or pretty-printed JSON "
    "(write each row with json.dumps(row) on a line of its own, or run: jq -c '.[]' data.json > data.jsonl)"
)
NESTED_TOO_DEEPLY = "JSON nested too deeply to read"
BOM = "\ufeff"  # byte-order mark some editors write before the first line

_decoder = json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # set in JSONDecoder.__init__


class RowError(ValueError):
    """A line that is not a usable row: ``field`` is where in the row ("" for the whole row)."""

    def __init__(self, field: str, message: str, *, names_field: bool = True) -> None:
        super().__init__(message)
        self.field, self.message = field, message
        # The message as one sentence: prefixed with the field when the message does not name it.
        self.sentence = message if names_field or not field else f"{field} {message}"


def decode_line(raw: bytes) -> str:
    """One line's bytes as text.

    Raises:
        RowError: the line is not UTF-8.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("", f"not valid UTF-8 (byte {e.start + 1} of the line)") from e


def parse_line(text: str) -> dict[str, Any]:
    """One non-blank line as a JSON object (surrounding whitespace allowed).

    Raises:
        RowError: invalid JSON, nested too deeply, or not an object.
    """
    try:  # the C scanner directly; json.loads adds two regex passes per line
        row, end = _scan(text, 0)
        if end != len(text):
            raise ValueError
    except (StopIteration, ValueError):
        try:
            row = _decode(text)
        except json.JSONDecodeError as e:
            raise RowError("", f"invalid JSON: {e.msg} at column {e.colno}") from e
        except RecursionError as e:
            raise RowError("", NESTED_TOO_DEEPLY) from e
    except RecursionError as e:
        raise RowError("", NESTED_TOO_DEEPLY) from e
    if type(row) is not dict:
        raise RowError("", f"expected a JSON object, got {type(row).__name__}")
    return row


def parse_first_line(text: str) -> dict[str, Any]:
    """``parse_line`` for a file's first non-blank line, which also tells a JSON file from JSONL.

    Raises:
        RowError: as ``parse_line``; the JSONL message when the file is a JSON array or pretty-printed.
    """
    try:
        return parse_line(text)
    except RowError as e:
        if not_jsonl(text):
            raise RowError("", JSONL_ONLY) from e
        raise


def not_jsonl(first_line: str) -> bool:
    """Whether a file's first non-blank line shows the file is JSON rather than JSONL: an array
    (``[`` ...), or a value that continues on the next line (pretty-printed, e.g. ``{`` alone)."""
    text = first_line.strip()
    try:
        value = _decode(text)
    except json.JSONDecodeError as e:
        return text.startswith("[") or e.pos >= len(text)  # an array, or valid so far but cut off by the line's end
    except RecursionError:
        return False  # too deep to tell; the row's own error says so
    return type(value) is list


def providers(training_type: TrainingType) -> str:
    """The finetune ``provider`` values whose backend trains ``training_type`` data ("dpo")."""
    from common import components  # only on an error path: it reads the project's entry points

    names = [c.name for c in components.of_kind(components.Kind.trainer) if c.training_type == training_type.value]
    return " or ".join(f"'{n}'" for n in names) or f"one that trains {training_type.value.upper()}"


def _messages(value: Any, field: str, *, last_assistant: bool, normalize: bool) -> list[dict[str, Any]]:
    """A checked message list; ``normalize`` keeps only role/content (extra keys break Arrow schemas)."""
    if type(value) is not list or not value:
        raise RowError(field, f"'{field}' must be a non-empty list of messages")
    for msg in value:  # fast path; the exact problem is found below only for a bad row
        if type(msg) is not dict or msg.get("role") not in ROLES or type(msg.get("content")) is not str:
            _message_error(value, field)
    if last_assistant and value[-1]["role"] != "assistant":
        raise RowError(f"{field}[{len(value) - 1}].role", f"'{field}' must end with an assistant message")
    return [{"role": m["role"], "content": m["content"]} for m in value] if normalize else value


def _message_error(value: list[Any], field: str) -> None:
    for i, msg in enumerate(value):
        if type(msg) is not dict:
            raise RowError(f"{field}[{i}]", "must be an object with 'role' and 'content'", names_field=False)
        role = msg.get("role")
        if role not in ROLES:
            raise RowError(
                f"{field}[{i}].role", f"must be one of {', '.join(sorted(ROLES))}; got {role!r}", names_field=False
            )
        if type(msg.get("content")) is not str:
            raise RowError(f"{field}[{i}].content", "must be a string", names_field=False)


def _string(value: Any, field: str) -> str:
    if type(value) is not str or not value.strip():
        raise RowError(field, f"'{field}' must be a non-empty string")
    return value


def sft_row(row: dict[str, Any], *, normalize: bool = True) -> tuple[str, dict[str, Any]]:
    """(format, the row's fields) of one SFT row.

    Raises:
        RowError: the row is in no SFT format, or breaks its format's rules.
    """
    if "messages" in row:
        return "messages", {"messages": _messages(row["messages"], "messages", last_assistant=True, normalize=normalize)}
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if type(prompt) is list or type(completion) is list:
            return "conversational_prompt_completion", {
                "prompt": _messages(prompt, "prompt", last_assistant=False, normalize=normalize),
                "completion": _messages(completion, "completion", last_assistant=True, normalize=normalize),
            }
        return "prompt_completion", {"prompt": _string(prompt, "prompt"), "completion": _string(completion, "completion")}
    if "text" in row:
        return "text", {"text": _string(row["text"], "text")}
    if "instruction" in row:
        return "messages", {"messages": _alpaca(row)}
    keys = ", ".join(sorted(row)) or "none"
    if "chosen" in row or "rejected" in row:
        raise RowError(
            "", f"this is a preference row (keys: {keys}), which an SFT finetune cannot train; "
            f"create the finetune with provider {providers(TrainingType.dpo)}"
        )
    raise RowError(
        "", f"unknown row format (keys: {keys}); expected 'messages', 'prompt' + 'completion', 'text', "
        "or 'instruction' + 'output'"
    )


def _alpaca(row: dict[str, Any]) -> list[dict[str, Any]]:
    """An Alpaca row as a chat: instruction (and input, when not empty) from the user, output from the assistant."""
    if "output" not in row:
        raise RowError("output", "'output' is missing: an Alpaca row ('instruction', 'input', 'output') needs the answer")
    user = _string(row["instruction"], "instruction")
    extra = row.get("input", "")
    if type(extra) is not str:
        raise RowError("input", "'input' must be a string")
    if extra.strip():
        user = f"{user}\n\n{extra}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _string(row["output"], "output")}]


def dpo_row(row: dict[str, Any], *, normalize: bool = True) -> tuple[str, dict[str, Any]]:
    """(format, the row's fields) of one preference row.

    Raises:
        RowError: a key is missing, or a value breaks the format's rules.
    """
    missing = [k for k in PREFERENCE_KEYS if k not in row]
    if missing:
        keys = ", ".join(sorted(row)) or "none"
        raise RowError(
            missing[0], f"unknown row format (keys: {keys}); preference rows need 'prompt', 'chosen' and "
            f"'rejected'; missing {', '.join(missing)}"
        )
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if type(prompt) is list or type(chosen) is list or type(rejected) is list:
        return "conversational_preference", {
            "prompt": _messages(prompt, "prompt", last_assistant=False, normalize=normalize),
            "chosen": _messages(chosen, "chosen", last_assistant=True, normalize=normalize),
            "rejected": _messages(rejected, "rejected", last_assistant=True, normalize=normalize),
        }
    return "preference", {k: _string(row[k], k) for k in PREFERENCE_KEYS}


PARSERS: dict[TrainingType, Callable[..., tuple[str, dict[str, Any]]]] = {
    TrainingType.sft: sft_row,
    TrainingType.dpo: dpo_row,
}
