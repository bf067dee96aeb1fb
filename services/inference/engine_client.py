"""The API process's side of the worker pipe: starts the worker, matches its answers to requests.

The event loop never waits on the engine: a reader thread takes messages off the pipe and hands each
to the asyncio queue of its request, so /health answers while a generation runs. If the worker dies
(killed, out of memory), every request in flight fails with 503 and the next request starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import uuid
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from common.errors import ServiceUnavailable, TrainyardError
from common.settings import Settings
from services.inference import worker
from services.inference.engine import Text

log = logging.getLogger("trainyard.inference")
_DEAD = "the inference worker exited while handling the request; it restarts on the next request"


def _error(status: int, error: str, detail: str) -> TrainyardError:
    exc = TrainyardError(detail, error=error)
    exc.status_code = status
    return exc


def _coalesced(first: tuple[Any, ...], queue: asyncio.Queue[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``first`` and every message already waiting behind it, consecutive text events joined into one:
    when the event loop falls behind the worker, one chunk carries what piled up, not one per token."""
    batch = [first]
    while not queue.empty():
        msg = queue.get_nowait()
        last = batch[-1]
        if msg[0] == last[0] == "event" and isinstance(msg[2], Text) and isinstance(last[2], Text):
            batch[-1] = ("event", msg[1], Text(last[2].text + msg[2].text))
        else:
            batch.append(msg)
    return batch


class EngineClient:
    def __init__(self, settings: Settings) -> None:
        self.engine_name = settings.inference_engine
        self._ctx = multiprocessing.get_context("spawn")
        self._pending: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker.main, args=(child, self.engine_name), name="inference-worker", daemon=True)
        proc.start()
        child.close()  # so recv() sees EOF when the worker dies
        self._conn, self._proc = parent, proc
        threading.Thread(target=self._read, args=(parent,), name="worker-reader", daemon=True).start()
        log.info("inference worker started (pid %s, engine %s)", proc.pid, self.engine_name)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            self._deliver(msg[1], msg)
        with self._lock:
            if self._conn is conn:
                self._conn = None
            rids = list(self._pending)
        for rid in rids:
            self._deliver(rid, ("error", rid, 503, "service_unavailable", _DEAD))

    def _deliver(self, rid: str, msg: tuple[Any, ...]) -> None:
        queue = self._pending.get(rid)
        if queue is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(queue.put_nowait, msg)

    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._lock:
            if self._conn is None:
                self._spawn()
            assert self._conn is not None
            try:
                self._conn.send(msg)
            except (OSError, ValueError) as e:
                raise ServiceUnavailable("the inference worker is not reachable") from e

    async def submit(self, kind: str, caller: str, payload: Any) -> AsyncIterator[tuple[Any, ...]]:
        """The worker's messages for one request: events, then "done"; raises on "error".

        Leaving early (the client went away) cancels the request in the worker.
        """
        rid = uuid.uuid4().hex
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._pending[rid] = queue
        finished = False
        try:
            self._send((kind, rid, caller, payload))
            while True:
                for msg in _coalesced(await queue.get(), queue):
                    if msg[0] == "error":
                        finished = True
                        raise _error(*msg[2:])
                    finished = msg[0] == "done"
                    yield msg
                    if finished:
                        return
        finally:
            self._pending.pop(rid, None)
            if not finished and self._conn is not None:
                with contextlib.suppress(ServiceUnavailable):
                    self._send(("cancel", rid))

    async def call(self, kind: str, caller: str, payload: Any) -> Any:
        """A request with one answer (export, loaded)."""
        async for msg in self.submit(kind, caller, payload):
            if msg[0] == "done":
                return msg[2]
        raise ServiceUnavailable(_DEAD)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            conn, proc, self._conn = self._conn, self._proc, None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(worker.SHUTDOWN)
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
