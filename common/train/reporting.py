"""Progress from inside a job: one stdout line (the job log) and one POST per report.

The service's internal endpoint turns each ``ProgressReport`` into a job event.
Reporting must never fail a job nor slow it: POSTs go out in order from a
background thread, so a training step never waits on the network, and a service
that is restarting or unreachable costs a log line on stderr, not a training run.
``close()`` flushes what is queued (bounded) before the program exits.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from common.schemas import EventLevel, Progress, ProgressReport

if TYPE_CHECKING:
    import httpx
    from transformers import TrainerCallback

RETRIES = 3
TIMEOUT_S = 5.0
FLUSH_S = 15.0  # how long close() waits for queued reports


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (RANK, else LOCAL_RANK), or a plain single process."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return rank.strip() == "0"


class ProgressReporter:
    """Prints and POSTs ``ProgressReport``s; only the main process reports.

    Also carries the cancel flag, because it is the one object every backend is
    handed: SIGTERM sets ``cancel_requested`` and the trainer callback stops at
    the next step.
    """

    def __init__(
        self,
        url: str | None,
        token: str | None = None,
        *,
        enabled: bool = True,
        out: TextIO | None = None,
        retries: int = RETRIES,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.url = url or None
        self._token = token
        self.enabled = enabled
        self.out = out or sys.stdout
        self.retries = max(1, retries)
        self.timeout = timeout
        self.cancel_requested = threading.Event()
        self.in_training = False
        self._client: httpx.Client | None = None
        self._queue: queue.Queue[ProgressReport | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        if enabled and not self.url:
            self._err("TRAINYARD_PROGRESS_URL is not set; progress is printed only")

    @classmethod
    def from_env(cls, token: str | None) -> ProgressReporter:
        """The URL comes from the environment; the token from the job's secrets file (never the environment)."""
        return cls(os.environ.get("TRAINYARD_PROGRESS_URL"), token, enabled=is_main_process())

    # ------------------------------------------------------------ reports

    def report(self, report: ProgressReport) -> None:
        """Print one line and POST the report; never raises."""
        if not self.enabled:
            return
        print(format_line(report), file=self.out, flush=True)
        if self.url:
            if self._sender is None:
                self._sender = threading.Thread(target=self._drain, name="progress-sender", daemon=True)
                self._sender.start()
            self._queue.put(report)

    def started(self, message: str = "training program started", **data: Any) -> None:
        self.report(ProgressReport(type="started", message=message, data=data))

    def progress(self, progress: Progress, message: str = "") -> None:
        self.report(ProgressReport(type="progress", message=message, progress=progress))

    def metrics(self, metrics: dict[str, Any], message: str = "training finished") -> None:
        self.report(ProgressReport(type="metrics", message=message, metrics=metrics))

    def checkpoint(self, step: int, path: str) -> None:
        self.report(
            ProgressReport(type="checkpoint", message=f"checkpoint at step {step}", data={"step": step, "path": path})
        )

    def log(self, message: str, level: EventLevel = EventLevel.info) -> None:
        self.report(ProgressReport(type="log", level=level, message=message))

    def close(self, timeout: float = FLUSH_S) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then release the client."""
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join(timeout)
            if self._sender.is_alive():
                self._err("progress reports still queued at exit were dropped")
            self._sender = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------ transport

    def _drain(self) -> None:
        while (report := self._queue.get()) is not None:
            self._post(report)

    def _post(self, report: ProgressReport) -> None:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._client = httpx.Client(timeout=self.timeout, headers=headers)
        body = report.model_dump(mode="json", exclude_none=True)
        problem = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                resp = self._client.post(self.url, json=body)  # type: ignore[arg-type]
            except httpx.HTTPError as e:
                problem = type(e).__name__
                continue
            if resp.status_code < 300:
                return
            problem = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code != 429:
                break  # a 4xx will not get better by retrying
        self._err(f"progress report '{report.type}' not delivered ({problem})")

    @staticmethod
    def _err(message: str) -> None:
        print(f"trainyard: {message}", file=sys.stderr, flush=True)


def format_line(report: ProgressReport) -> str:
    """The compact job-log line: ``[progress] step 10/40 (25.0%) loss=2.3456 lr=2.00e-04 epoch=0.50``."""
    parts = [f"[{report.type}]"]
    p = report.progress
    if p is not None:
        total = f"/{p.total_steps}" if p.total_steps else ""
        parts.append(f"step {p.step}{total} ({p.percent:.1f}%)")
        if p.loss is not None:
            parts.append(f"loss={p.loss:.4f}")
        if p.learning_rate is not None:
            parts.append(f"lr={p.learning_rate:.2e}")
        if p.epoch is not None:
            parts.append(f"epoch={p.epoch:.2f}")
        if p.eval_loss is not None:
            parts.append(f"eval_loss={p.eval_loss:.4f}")
        if p.tokens_seen:
            parts.append(f"tokens={p.tokens_seen}")
    if report.message:
        parts.append(report.message)
    if report.metrics:
        parts.append(" ".join(f"{k}={_fmt(v)}" for k, v in report.metrics.items()))
    return " ".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def progress_callback(reporter: ProgressReporter) -> TrainerCallback:
    """A transformers callback that reports every log step, each checkpoint, and honours cancel."""
    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reporter.in_training = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reporter.in_training = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if reporter.cancel_requested.is_set():
                control.should_training_stop = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if not state.is_world_process_zero or "train_runtime" in logs:
                return  # the final summary goes out as the job's metrics
            step, total = state.global_step, state.max_steps or None
            # TRL logs its own count as num_tokens; transformers' (when enabled) as num_input_tokens_seen.
            tokens = logs.get("num_tokens") or logs.get("num_input_tokens_seen") or state.num_input_tokens_seen
            progress = Progress(
                step=step,
                total_steps=total,
                epoch=state.epoch if state.epoch is not None else logs.get("epoch"),
                loss=logs.get("loss"),
                learning_rate=logs.get("learning_rate"),
                percent=round(100.0 * step / total, 2) if total else 0.0,
                eval_loss=logs.get("eval_loss"),
                tokens_seen=int(tokens) if tokens else None,
            )
            reporter.progress(progress, message="eval" if "eval_loss" in logs else "")

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                # Relative to the job's output, which is uploaded to output_uri when the job ends.
                reporter.checkpoint(state.global_step, f"checkpoint-{state.global_step}")

    return _ProgressCallback()
