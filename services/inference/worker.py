"""The engine's process: it owns the weights and runs one request at a time, taken fairly from the queue.

The API process starts it (``multiprocessing`` spawn) and talks to it over one pipe:

    API -> worker   ("generate", rid, caller, GenerationRequest) | ("export", rid, caller, ExportJob)
                    ("cancel", rid) | ("loaded", rid, caller, None) | ("shutdown",)
    worker -> API   ("event", rid, Event) | ("done", rid, result) | ("error", rid, status, error, detail)

Requests wait in one queue per caller and are taken round-robin across callers (FIFO within one), so a
caller with many requests cannot starve another. One request runs at a time, so no two generations
ever share a model object. A reader thread takes messages off the pipe while a request runs, which
is how a cancel (the client went away) stops a generation early. This module imports no torch at
import time: the API process imports it to name ``main`` as the process target.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections import OrderedDict, deque
from multiprocessing.connection import Connection
from typing import Any

from common import noise
from common.errors import TrainyardError
from services.inference.engine import ENGINES, Engine, ExportJob, GenerationRequest

log = logging.getLogger("trainyard.inference.worker")
SHUTDOWN = ("shutdown",)


class FairQueue:
    """Round-robin across callers, FIFO within a caller; ``get`` blocks until something is queued."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[tuple[Any, ...]]] = OrderedDict()

    def put(self, caller: str, item: tuple[Any, ...]) -> None:
        with self._cond:
            self._queues.setdefault(caller, deque()).append(item)
            self._cond.notify()

    def get(self) -> tuple[Any, ...]:
        with self._cond:
            while not self._queues:
                self._cond.wait()
            caller, queue = self._queues.popitem(last=False)
            item = queue.popleft()
            if queue:
                self._queues[caller] = queue  # back of the line
            return item


def make_engine(name: str) -> Engine:
    from common.settings import get_settings

    module, _, cls = ENGINES[name].partition(":")
    engine: Engine = getattr(importlib.import_module(module), cls)(get_settings())
    return engine


def main(conn: Connection, engine_name: str) -> None:
    # Idle OpenMP threads sleep instead of spinning (libgomp spins by default): the API process and the
    # gateway relay every token on the same CPUs, and spinning threads starve them between kernels.
    # Read once, when torch loads (below, in make_engine); an operator's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    noise.silence()  # before torch/bitsandbytes load: their harmless CPU-fallback notes stay out of the log
    engine = make_engine(engine_name)
    jobs = FairQueue()
    cancelled: set[str] = set()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = SHUTDOWN  # the API process is gone
            if msg[0] == "shutdown":
                jobs.put("", SHUTDOWN)
                return
            if msg[0] == "cancel":
                cancelled.add(msg[1])
            else:
                jobs.put(msg[2], msg)

    threading.Thread(target=read, name="pipe-reader", daemon=True).start()
    log.info("inference worker ready (engine %s)", engine_name)
    while (job := jobs.get()) != SHUTDOWN:
        kind, rid, _, payload = job
        if rid in cancelled:
            cancelled.discard(rid)
            continue
        try:
            conn.send(("done", rid, _run(engine, kind, rid, payload, cancelled, conn)))
        except TrainyardError as e:
            conn.send(("error", rid, e.status_code, e.error, str(e.detail)))
        except Exception as e:  # noqa: BLE001 - reported as a 500 without its text; logged here
            log.exception("%s %s failed", kind, rid)
            conn.send(("error", rid, 500, "internal_error", f"{kind} failed ({type(e).__name__})"))
        finally:
            cancelled.discard(rid)


def _run(engine: Engine, kind: str, rid: str, payload: Any, cancelled: set[str], conn: Connection) -> Any:
    if kind == "generate":
        assert isinstance(payload, GenerationRequest)
        for event in engine.stream(payload, lambda: rid in cancelled):
            conn.send(("event", rid, event))
            if rid in cancelled:
                break
        return None
    if kind == "export":
        assert isinstance(payload, ExportJob)
        return engine.export(payload)
    if kind == "loaded":
        return engine.loaded()
    raise ValueError(f"unknown request kind {kind!r}")
