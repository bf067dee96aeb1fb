"""Status changes and events of a table whose rows move through a transition table.

Trainer jobs (``common.db``) and the gateway's finetunes (``gateway.db``) both keep a status guarded
by a transition table and an event log beside it; this module is the one implementation of both
writes. A status change is a conditional UPDATE (``WHERE status IN <states that may move to it>``),
so replicas racing on one row can never move it backwards, and every change that happens is
recorded as a status event in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from common.schemas import EventLevel

StatusT = TypeVar("StatusT", bound=StrEnum)


def utcnow() -> datetime:
    return datetime.now(UTC)


def jsonable(data: dict[str, Any] | None) -> dict[str, Any]:
    """An event's ``data`` as plain JSON (datetimes, enums and the like become strings)."""
    return json.loads(json.dumps(data or {}, default=str))


@dataclass(frozen=True)
class StatusLog(Generic[StatusT]):
    """One table's status writes and event log.

    ``table`` has ``id``, ``status`` and ``updated_at`` columns; ``events`` has ``id`` (ascending),
    ``owner`` (the column naming the row), ``created_at``, ``level``, ``type``, ``message`` and
    ``data``; ``status_event`` is the event type a status change is recorded under."""

    table: Table
    transitions: Mapping[StatusT, Collection[StatusT]]
    events: Table
    owner: str
    status_event: StrEnum

    def move(
        self,
        conn: Connection,
        row_id: str,
        to: StatusT,
        *,
        message: str,
        level: EventLevel = EventLevel.info,
        data: dict[str, Any] | None = None,
        where: Sequence[Any] = (),
        **values: Any,
    ) -> bool:
        """Set ``status = to`` (and ``values``) only where the transition table allows the move from
        the row's current status and every ``where`` clause holds, and record a status event.
        Returns False and changes nothing when the move is not allowed."""
        allowed_from = [s.value for s, targets in self.transitions.items() if to in targets]
        t = self.table
        res = conn.execute(
            update(t)
            .where(t.c.id == row_id, t.c.status.in_(allowed_from), *where)
            .values(status=to.value, **{"updated_at": utcnow(), **values})
        )
        if res.rowcount != 1:
            return False
        self.record(conn, row_id, self.status_event, message, level=level, data={"status": to.value, **(data or {})})
        return True

    def record(
        self,
        conn: Connection,
        row_id: str,
        type_: StrEnum,
        message: str,
        *,
        level: EventLevel = EventLevel.info,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Append one event to the row's log."""
        conn.execute(
            insert(self.events).values(
                {self.owner: row_id, "created_at": utcnow(), "level": level.value, "type": type_.value,
                 "message": message, "data": jsonable(data)}
            )
        )

    def after(self, conn: Connection, row_id: str, *, after_id: int, limit: int) -> list[RowMapping]:
        """The row's events with id > ``after_id``, oldest first: a keyset page (the cursor is the
        last id seen), served by the index on (owner, id)."""
        e = self.events
        q = select(e).where(e.c[self.owner] == row_id, e.c.id > after_id).order_by(e.c.id).limit(limit)
        return list(conn.execute(q).mappings())
