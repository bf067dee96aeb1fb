"""The gateway's background work, owned by the app lifespan and stopped on shutdown.

* ``ValidationWorker``: threads that claim finetunes in ``pk_dataset_validation_in_progress`` from
  the database (one replica wins each claim), validate their datasets with
  ``common.validation`` and record the outcome. A claim carries a heartbeat; a gateway that dies
  mid-validation leaves a stale claim that any replica (or the restarted one) picks up again, and a
  clean shutdown releases its claims at once. A result is recorded only if the finetune is still
  waiting for that very validation run (a PUT that reset it meanwhile wins).
* ``Refresher``: every ``refresh_interval_seconds`` mirrors each pending/running finetune's job and
  settles starts the gateway could not confirm. Every service call has a deadline.

No torch here: tokenizers come from the ``tokenizers`` library (see common/validation.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import RowMapping

from common.db import tx
from common.errors import StorageError, TrainyardError
from common.modelrefs import ModelRefused
from common.schemas import (
    EventLevel,
    FinetuneStatus,
    TrainingType,
    TuningParameters,
    ValidationIssue,
    ValidationReport,
)
from common.validation import Limits, Stopped, load_tokenizer, validate_uri
from gateway import datasets, db, mirror, modelrefs, models
from gateway.context import Gateway

log = logging.getLogger("trainyard.gateway.workers")

FS = FinetuneStatus
EV = db.FinetuneEventType
HEARTBEAT_EVERY = 5.0  # seconds between heartbeats of a running validation
CLAIM_STALE_AFTER = timedelta(seconds=60)  # a claim without a heartbeat this long is taken over
IDLE_POLL = 2.0  # seconds a validation thread sleeps when nothing waits (a new request wakes it)
DEFAULT_MAX_SEQUENCE_LENGTH = TuningParameters.model_fields["max_sequence_length"].default


@dataclass(frozen=True)
class DatasetCheck:
    """One dataset's validation report, and which dataset it is."""

    dataset_id: str
    report: ValidationReport


@dataclass
class ValidationOutcome:
    """What a validation run found: a check per role ("training", "validation") that was validated,
    or why it could not run (``error``; checks done before the problem are kept)."""

    checks: dict[str, DatasetCheck] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.report.valid for c in self.checks.values())


class _Tokenizers:
    """A few recently used tokenizers, so validating again does not reload (or re-download) them."""

    def __init__(self, gw: Gateway, size: int = 4) -> None:
        self.gw, self.size = gw, size
        self.cache: OrderedDict[str, tuple[Any, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, model: str) -> tuple[Any, str]:
        with self.lock:
            if model in self.cache:
                self.cache.move_to_end(model)
                return self.cache[model]
        loaded = load_tokenizer(model, self.gw.store)
        with self.lock:
            self.cache[model] = loaded
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return loaded


class ValidationWorker:
    def __init__(self, gw: Gateway, threads: int) -> None:
        self.gw = gw
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.tokenizers = _Tokenizers(gw)
        self.threads = [
            threading.Thread(target=self._loop, name=f"validation-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def wake(self) -> None:
        self.wakeup.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wakeup.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not stop within %.0fs", t.name, timeout)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                with tx(self.gw.engine) as conn:
                    row = db.claim_validation(conn, self.worker_id, db.utcnow() - CLAIM_STALE_AFTER)
            except Exception:  # the database may be restarting; try again after the idle poll
                log.exception("could not claim a validation")
                row = None
            if row is None:
                self.wakeup.wait(IDLE_POLL)
                self.wakeup.clear()
                continue
            self.run(row)

    def run(self, row: RowMapping) -> None:
        """Validate one claimed finetune and record the outcome (or release the claim on shutdown)."""
        finetune_id, run = row["id"], row["validation_run"]
        current = (db.finetunes.c.validation_run == run, db.finetunes.c.validation_claimed_by == self.worker_id)
        try:
            outcome = self._validate(row, current)
        except Stopped:
            if self.stopping.is_set():
                with tx(self.gw.engine) as conn:  # hand it back: the next gateway start picks it up
                    if db.update_finetune(conn, finetune_id, *current, validation_claimed_by=None):
                        db.add_event(conn, finetune_id, EV.validation, "validation interrupted by a gateway shutdown; "
                                     "it resumes when a gateway runs again", level=EventLevel.warning)
            return
        except Exception as e:  # never leave a finetune stuck in progress
            log.exception("validation of finetune %s crashed", finetune_id)
            outcome = ValidationOutcome(error=f"validation crashed ({type(e).__name__}); try again or contact the operator")
        self._record(row, current, outcome)

    def _validate(self, row: RowMapping, current: tuple[Any, ...]) -> ValidationOutcome:
        training_type = TrainingType(row["training_type"])
        hp = row["hyperparameters"] or {}
        limits = Limits(
            max_rows=self.gw.settings.validation_max_rows,
            max_errors=self.gw.settings.validation_max_errors,
            max_sequence_length=hp.get("max_sequence_length") or DEFAULT_MAX_SEQUENCE_LENGTH,
        )
        with tx(self.gw.engine) as conn:
            files = []
            for role, dataset_id in (("training", row["training_dataset_id"]), ("validation", row["validation_dataset_id"])):
                if dataset_id:
                    try:
                        ds = datasets.dataset_for_finetune(
                            self.gw, conn, dataset_id, row["workspace_id"], role, attach_landed=False
                        )
                    except TrainyardError as e:
                        return ValidationOutcome(error=str(e.detail))
                    files.append((role, ds))
        try:
            with tx(self.gw.engine) as conn:
                model = modelrefs.resolve(conn, self.gw.settings, row["model"], row["workspace_id"])
        except ModelRefused as e:
            return ValidationOutcome(error=str(e.detail))
        tokenizer, name_or_note = self.tokenizers.get(model)
        last_beat = time.monotonic()

        def on_progress(_: int) -> None:
            nonlocal last_beat
            if self.stopping.is_set():
                raise Stopped
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY:
                last_beat = time.monotonic()
                with tx(self.gw.engine) as conn:
                    if not db.update_finetune(conn, row["id"], *current, validation_heartbeat_at=db.utcnow()):
                        raise Stopped  # reset or cancelled meanwhile: the result would be dropped anyway

        outcome = ValidationOutcome()
        for role, ds in files:
            try:
                report = validate_uri(
                    self.gw.store, ds["uri"], training_type, limits=limits, tokenizer=tokenizer,
                    tokenizer_name=name_or_note if tokenizer is not None else "",
                    token_note=None if tokenizer is not None else name_or_note, on_progress=on_progress,
                )
            except StorageError as e:
                outcome.error = f"{role} dataset {ds['id']}: {e.detail}"
                return outcome
            outcome.checks[role] = DatasetCheck(ds["id"], report)
        if "training" in outcome.checks and "validation" in outcome.checks:
            _check_same_format(outcome.checks["training"].report, outcome.checks["validation"].report)
        return outcome

    def _record(self, row: RowMapping, current: tuple[Any, ...], outcome: ValidationOutcome) -> None:
        ok = outcome.ok
        to = FS.validation_successful if ok else FS.validation_failed
        started = (row["validation"] or {}).get("started_at")
        validation = {
            "started_at": started, "finished_at": db.utcnow().isoformat(), "error": outcome.error,
            **{role: c.report.model_dump(mode="json") for role, c in outcome.checks.items()},
        }
        summary = {role: {"rows": c.report.rows, "errors_total": c.report.errors_total}
                   for role, c in outcome.checks.items()}
        with tx(self.gw.engine) as conn:
            moved = db.set_finetune_status(
                conn, row["id"], to, message="datasets are valid" if ok else "dataset validation failed",
                level=EventLevel.info if ok else EventLevel.warning, data=summary,
                only_from=frozenset({FS.validation_in_progress}), where=current,
                validation=validation, validation_claimed_by=None,
            )
            if moved:
                for c in outcome.checks.values():
                    status = FS.validation_successful if c.report.valid else FS.validation_failed
                    datasets.record_validation(conn, c.dataset_id, c.report, status)
        log.info("finetune %s validation: %s%s", row["id"], to.value, "" if moved else " (dropped: finetune changed)")


def _check_same_format(train: ValidationReport, val: ValidationReport) -> None:
    if train.valid and val.valid and train.format != val.format:
        val.errors.append(ValidationIssue(
            line=0, field="", message=f"the validation file is '{val.format}' but the training file is "
            f"'{train.format}'; both must share one format",
        ))
        val.errors_total += 1
        val.valid = False


class Refresher:
    """Mirrors active finetunes' jobs and settles unconfirmed starts, on one thread."""

    def __init__(self, gw: Gateway, interval: float) -> None:
        self.gw, self.interval = gw, interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="finetune-refresher", daemon=True)
        # a POST /train that got no answer may still be processed; give it three deadlines before asking
        self.claim_grace = timedelta(seconds=max(5.0, 3 * gw.settings.service_timeout_seconds))

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        timeout = min(self.interval * 2, self.gw.settings.service_timeout_seconds)
        try:
            with tx(self.gw.engine) as conn:
                ids = db.active_finetune_ids(conn)
            for finetune_id in ids:
                if self.stopping.is_set():
                    return
                try:
                    mirror.refresh(self.gw, finetune_id, timeout=timeout)
                except TrainyardError as e:
                    log.debug("finetune %s not refreshed: %s", finetune_id, e.error)
            mirror.settle_start_claims(self.gw, self.claim_grace)
            models.register_missing(self.gw)
        except Exception:  # keep mirroring after a database hiccup
            log.exception("finetune refresh failed")
