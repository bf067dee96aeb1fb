"""Streaming dataset validation: is a JSONL file fit for a finetune, and where is it not?

The gateway runs this in the background before a finetune may start, so a user learns about
line 48 213 in seconds instead of after a GPU job has loaded its model. It reads the file once,
in blocks, with flat memory (one block, one line and one tokenizer batch at a time), and checks:

* every line is a JSON object (blank lines are skipped, as the training program skips them); a
  file that is a JSON array or pretty-printed JSON gets one error saying so, not one per line;
* the row format fits the training type, with the rules the training job applies too
  (``common/rows.py``): SFT rows are chat ``messages`` (roles system/user/assistant,
  string contents, ending with an assistant turn), ``prompt``/``completion`` (strings or message
  lists), ``text`` or Alpaca's ``instruction``/``input``/``output`` (read as ``messages``); DPO rows
  have ``prompt``/``chosen``/``rejected``; one format per file;
* limits: at least one row, at most ``max_rows``, no line over ``max_line_bytes``, and, when the
  base model's tokenizer can be loaded, no row over ``max_sequence_length`` tokens.

Errors are ``{line, field, message}``; all are counted, the first ``max_errors`` by line are kept.
Token counts use the ``tokenizers`` library on ``tokenizer.json`` (no torch, no transformers),
batched on a helper thread while the next block is parsed (the Rust side releases the GIL).
Chat templates are not rendered: a row's count is its content tokens plus a fixed allowance per
message, so counts are approximate by a few tokens per turn.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from common.rows import BOM, JSONL_ONLY, NESTED_TOO_DEEPLY, PARSERS, RowError, decode_line, not_jsonl, parse_line
from common.schemas import TokenStats, TrainingType, ValidationIssue, ValidationReport

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from common.storage import ObjectStore

BLOCK_SIZE = 1024 * 1024
TOKEN_BATCH = 256
TEMPLATE_TOKENS_PER_MESSAGE = 4  # role header + end-of-turn + newline in a Llama-3-like template
TEMPLATE_TOKENS_PER_ROW = 1  # bos
# Text past limit * this many characters is never tokenized: no tokenizer in use averages more
# characters per token, so the cut text alone already breaks the limit, and memory stays flat
# however long a line is (within max_line_bytes).
MAX_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class Limits:
    max_rows: int = 10_000_000
    max_errors: int = 50
    max_sequence_length: int = 2048
    max_line_bytes: int = 32 * 1024 * 1024
    token_sample_rows: int = 2_000  # rows always tokenized; after them only rows that may be too long


class Stopped(Exception):
    """Raised by a progress callback to abandon a validation (shutdown, or the finetune was reset)."""


# --------------------------------------------------------------------------- token sequences
# A row's text for token counting is one or more sequences, each a tuple of parts (strings or checked
# message lists) whose text is only assembled when tokens are counted; DPO rows have two
# (prompt+chosen, prompt+rejected) and count as the longer. The row grammar is ``common.rows``.

Part = str | list[dict[str, Any]]
Sequences = tuple[tuple[Part, ...], ...]


def _extra(*message_lists: list[Any]) -> int:
    return sum(len(m) for m in message_lists) * TEMPLATE_TOKENS_PER_MESSAGE


def _sft_sequences(fields: dict[str, Any]) -> tuple[Sequences, int]:
    parts = tuple(fields.values())
    return (parts,), _extra(*(p for p in parts if type(p) is list))


def _dpo_sequences(fields: dict[str, Any]) -> tuple[Sequences, int]:
    p, c, r = fields["prompt"], fields["chosen"], fields["rejected"]
    extra = _extra(p) + _extra(c if len(c) > len(r) else r) if type(p) is list else 0
    return ((p, c), (p, r)), extra


def _text(seq: tuple[Part, ...]) -> str:
    return "\n".join(part if isinstance(part, str) else "\n".join([m["content"] for m in part]) for part in seq)


SEQUENCES: dict[TrainingType, Callable[[dict[str, Any]], tuple[Sequences, int]]] = {
    TrainingType.sft: _sft_sequences,
    TrainingType.dpo: _dpo_sequences,
}


# --------------------------------------------------------------------------- the validator


class _Errors:
    """Counts every error and keeps the ``cap`` with the lowest line numbers (a bounded heap)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total, self._seq = cap, 0, 0
        self._heap: list[tuple[int, int, ValidationIssue]] = []

    def add(self, line: int, field: str, message: str) -> None:
        self.total += 1
        self._seq += 1
        item = (-line, -self._seq, ValidationIssue(line=line, field=field, message=message))
        if len(self._heap) < self.cap:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:  # a lower line than the highest kept
            heapq.heapreplace(self._heap, item)

    def sorted(self) -> list[ValidationIssue]:
        return [issue for _, _, issue in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]


class _TokenCounter:
    """Counts tokens of row texts in batches on one helper thread, at most two batches in flight.

    Tokenizing is the slow part (tens of microseconds a row), so after the first ``sample_rows``
    rows only rows that could break the limit are tokenized: a byte-level token covers at least one
    byte, so a row of at most ``limit - allowance`` UTF-8 bytes cannot exceed ``limit`` tokens. The
    rest count towards the total with the sample's tokens-per-byte ratio (``estimated_rows``)."""

    def __init__(self, tokenizer: Tokenizer, limit: int, errors: _Errors, sample_rows: int) -> None:
        self.tokenizer, self.limit, self.errors, self.sample_rows = tokenizer, limit, errors, sample_rows
        self.encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validation-tokens")
        self.texts: list[str] = []
        self.rows: list[tuple[int, int, int, int]] = []  # (line, number of texts, extra tokens, bytes)
        self.inflight: list[tuple[Future[list[int]], list[tuple[int, int, int, int]]]] = []
        self.total = self.max = self.counted = self.over = 0
        self.counted_bytes = self.counted_extra = 0
        self.estimated = self.estimated_bytes = self.estimated_extra = 0

    def add(self, line: int, seqs: Sequences, extra: int) -> None:
        cap = self.limit * MAX_CHARS_PER_TOKEN
        texts = [t if len(t) <= cap else t[:cap] for t in (_text(seq) for seq in seqs)]
        nbytes = max(len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts)
        if self.counted + len(self.rows) >= self.sample_rows and nbytes + extra + TEMPLATE_TOKENS_PER_ROW < self.limit:
            self.estimated += 1
            self.estimated_bytes += nbytes
            self.estimated_extra += extra + TEMPLATE_TOKENS_PER_ROW
            return
        self.texts.extend(texts)
        self.rows.append((line, len(texts), extra, nbytes))
        if len(self.rows) >= TOKEN_BATCH:
            self._flush()

    def _lengths(self, texts: list[str]) -> list[int]:
        return [len(enc) for enc in self.encode(texts, add_special_tokens=False)]

    def _flush(self) -> None:
        if self.rows:
            self.inflight.append((self.pool.submit(self._lengths, self.texts), self.rows))
            self.texts, self.rows = [], []
        while len(self.inflight) > 1:
            self._collect()

    def _collect(self) -> None:
        fut, rows = self.inflight.pop(0)
        lengths = fut.result()
        i = 0
        for line, n, extra, nbytes in rows:
            content = max(lengths[i : i + n])
            tokens = content + extra + TEMPLATE_TOKENS_PER_ROW
            i += n
            self.total += tokens
            self.counted += 1
            self.counted_bytes += nbytes
            self.counted_extra += extra + TEMPLATE_TOKENS_PER_ROW
            if tokens > self.max:
                self.max = tokens
            if tokens > self.limit:
                self.over += 1
                about = "at least" if nbytes >= self.limit * MAX_CHARS_PER_TOKEN else "about"
                self.errors.add(
                    line, "", f"row has {about} {tokens} tokens, over max_sequence_length {self.limit} "
                    "(shorten it or raise hyperparameters.max_sequence_length)"
                )

    def finish(self) -> None:
        try:
            self._flush()
            while self.inflight:
                self._collect()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def stats(self, name: str) -> TokenStats | None:
        if not self.counted:
            return None
        content_ratio = (self.total - self.counted_extra) / max(1, self.counted_bytes)
        total = self.total + round(self.estimated_bytes * content_ratio) + self.estimated_extra
        rows = self.counted + self.estimated
        return TokenStats(
            tokenizer=name, total=total, max=self.max, mean=round(total / rows, 2), over_limit_rows=self.over,
            limit=self.limit, counted_rows=self.counted, estimated_rows=self.estimated,
        )

def _blocks(fh: BinaryIO, limits: Limits, errors: _Errors, on_read: Callable[[int], None]) -> Iterator[
    tuple[int, list[str]]
]:
    """(number of the first line, lines) per block of whole lines; flat memory.

    A line longer than ``max_line_bytes`` is reported and skipped without being held in memory;
    bytes that are not UTF-8 are reported per line."""
    line_no = 1  # number of the next line
    carry = b""
    skipping = False  # inside an over-long line, discarding until its newline
    while True:
        chunk = fh.read(BLOCK_SIZE)
        if not chunk:
            break
        on_read(len(chunk))
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            chunk, skipping = chunk[nl + 1 :], False
            line_no += 1
        buf = carry + chunk if carry else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            carry = buf
        else:
            carry = buf[end + 1 :]
            lines = _decode_lines(buf[: end + 1], line_no, errors)
            yield line_no, lines
            line_no += len(lines)
        if len(carry) > limits.max_line_bytes:
            errors.add(line_no, "", f"line is longer than {limits.max_line_bytes} bytes")
            carry, skipping = b"", True
    if carry and not skipping:
        yield line_no, _decode_lines(carry, line_no, errors)


def _decode_lines(block: bytes, first_line: int, errors: _Errors) -> list[str]:
    """The block's lines as text (trailing newline dropped); an undecodable line becomes '' plus an error."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        out = []
        for i, raw in enumerate(block.split(b"\n")[: block.count(b"\n") or 1]):
            try:
                out.append(decode_line(raw))
            except RowError as e:
                errors.add(first_line + i, e.field, e.message)
                out.append("")
        return out
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def validate_stream(
    fh: BinaryIO,
    training_type: TrainingType,
    *,
    limits: Limits = Limits(),
    tokenizer: Tokenizer | None = None,
    tokenizer_name: str = "",
    token_note: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Validate a JSONL stream (any object with ``read(n)``).

    Raises:
        Stopped: ``on_progress`` asked to stop; no report is produced.
    """
    started = time.perf_counter()
    parse, sequences = PARSERS[training_type], SEQUENCES[training_type]
    errors = _Errors(limits.max_errors)
    tokens = (
        _TokenCounter(tokenizer, limits.max_sequence_length, errors, limits.token_sample_rows)
        if tokenizer is not None else None
    )
    max_line = limits.max_line_bytes
    fmt: str | None = None
    fmt_line = 0
    rows = 0
    size = 0

    def on_read(n: int) -> None:
        nonlocal size
        size += n
        if on_progress is not None:
            on_progress(size)

    try:
        for first, lines in _blocks(fh, limits, errors, on_read):
            line = first - 1
            for text in lines:
                line += 1
                if line == 1:
                    text = text.lstrip(BOM)
                if not text or text.isspace():
                    continue
                if len(text) > max_line:
                    errors.add(line, "", f"line is longer than {max_line} bytes")
                    continue
                try:
                    row = parse_line(text)
                except RowError as e:
                    if rows == 0 and errors.total == 0 and not_jsonl(text):  # the first line: one error, not one a line
                        errors.add(line, "", JSONL_ONLY)
                        raise _StopReading from e
                    errors.add(line, e.field, e.message)
                    continue
                rows += 1
                if rows > limits.max_rows:
                    errors.add(line, "", f"more than max_rows={limits.max_rows} rows; the rest was not read")
                    rows -= 1
                    raise _StopReading
                try:
                    row_fmt, fields = parse(row, normalize=False)
                except RowError as e:
                    errors.add(line, e.field, e.message)
                    continue
                except RecursionError:
                    errors.add(line, "", NESTED_TOO_DEEPLY)
                    continue
                if fmt is None:
                    fmt, fmt_line = row_fmt, line
                elif row_fmt != fmt:
                    errors.add(
                        line, "", f"row is in '{row_fmt}' format but line {fmt_line} set the file's format to "
                        f"'{fmt}'; all rows of a file must share one format"
                    )
                    continue
                if tokens is not None:
                    tokens.add(line, *sequences(fields))
    except _StopReading:
        pass
    finally:
        if tokens is not None:
            tokens.finish()
    if rows == 0 and errors.total == 0:
        errors.add(0, "", "the file has no rows")
    stats = tokens.stats(tokenizer_name) if tokens is not None else None
    return ValidationReport(
        valid=errors.total == 0,
        training_type=training_type,
        format=fmt,
        rows=rows,
        bytes=size,
        errors=errors.sorted(),
        errors_total=errors.total,
        errors_truncated=errors.total > limits.max_errors,
        tokens=stats,
        token_note=token_note if tokenizer is None else None,
        duration_seconds=round(time.perf_counter() - started, 3),
    )


class _StopReading(Exception):
    pass


def validate_uri(
    store: ObjectStore,
    uri: str,
    training_type: TrainingType,
    *,
    limits: Limits = Limits(),
    tokenizer: Tokenizer | None = None,
    tokenizer_name: str = "",
    token_note: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Validate the object at ``uri`` as it streams from storage.

    Raises:
        ObjectNotFound / StorageError: the object cannot be read.
        Stopped: ``on_progress`` asked to stop.
    """
    with store.open(uri) as fh:
        return validate_stream(
            fh, training_type, limits=limits, tokenizer=tokenizer, tokenizer_name=tokenizer_name,
            token_note=token_note, on_progress=on_progress,
        )


# --------------------------------------------------------------------------- tokenizers


def load_tokenizer(model: str, store: ObjectStore | None = None) -> tuple[Tokenizer | None, str]:
    """The base model's tokenizer from its ``tokenizer.json``, or None and a note saying why not.

    ``model`` is what a finetune names: a local directory, a file:// or s3:// prefix, or a hub id
    (fetched only when the hub is allowed: ``HF_HUB_OFFLINE`` unset). A PEFT adapter directory
    without its own tokenizer points to its base in ``adapter_config.json``. Never raises.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None, "token counts skipped: the 'tokenizers' package is not installed"
    try:
        return _load(Tokenizer, model, store, depth=0)
    except Exception as e:  # a tokenizer we cannot read only means no token counts
        return None, f"token counts skipped: could not load the tokenizer of '{model}' ({type(e).__name__})"


def _load(tokenizer_cls: Any, model: str, store: ObjectStore | None, depth: int) -> tuple[Any, str]:
    from common.catalog import resolve
    from common.settings import get_settings

    entry = resolve(model, get_settings())
    if entry is not None:
        if entry.available and entry.gguf_file:
            return None, f"token counts skipped: '{model}' is a GGUF file, which has no tokenizer.json"
        model = entry.path  # the catalog's local directory, or the hub id
    if model.startswith(("file://", "s3://")):
        if store is None:
            return None, f"token counts skipped: no object store to read '{model}'"
        if store.exists(store.join(model, "tokenizer.json")):
            data = store.get_bytes(store.join(model, "tokenizer.json"))
            return tokenizer_cls.from_str(data.decode("utf-8")), model
        if depth == 0 and store.exists(store.join(model, "adapter_config.json")):
            base = json.loads(store.get_bytes(store.join(model, "adapter_config.json"))).get("base_model_name_or_path")
            if base:
                return _load(tokenizer_cls, base, store, depth + 1)
        return None, f"token counts skipped: no tokenizer.json under '{model}'"
    path = Path(model)
    if path.is_absolute() and path.is_dir():
        if (path / "tokenizer.json").is_file():
            return tokenizer_cls.from_file(str(path / "tokenizer.json")), str(path)
        adapter = path / "adapter_config.json"
        if depth == 0 and adapter.is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if base:
                return _load(tokenizer_cls, base, store, depth + 1)
        return None, f"token counts skipped: no tokenizer.json in '{path}'"
    if model.startswith(("/", ".", "~")):
        return None, f"token counts skipped: '{model}' is not a directory here"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None, f"token counts skipped: '{model}' is a hub id and HF_HUB_OFFLINE is set"
    return tokenizer_cls.from_pretrained(model), f"hub:{model}"
