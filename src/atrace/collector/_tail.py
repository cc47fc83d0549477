"""The live tail: committed rows fanned out to subscribers, from this process and from others.

Two sources feed a :class:`TailHub`:

* **in process**: ingest calls :meth:`TailHub.publish` with the rows it just committed;
* **LISTEN/NOTIFY**: the ``records`` table's statement trigger (schema v3) sends, at COMMIT, one
  notification per project and statement carrying the transaction id and the time range of its
  rows. One listening connection per hub (not per client) hears them; the hub then fetches the
  rows once, by ``(project, ts range, xmin)`` through the ``(project, ts)`` index, and fans them
  out. So rows written by a collector next door, or straight by a ``PostgresSink``, reach every
  tail.

The hub hears its own ingest's notifications too. A notification whose (project, time range,
row count) equals a batch published here recently is skipped without a fetch; otherwise fetched
rows are checked against the keys of rows delivered recently, so a row reaches a subscriber once
whichever path brings it first. Nothing is fetched for a project nobody tails.

Each subscriber has a bounded queue: a reader too slow for the stream loses the newest rows,
counted in ``Subscription.dropped``, instead of growing the collector's memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .._postgres.schema import tail_channel
from .._postgres.session import connection_init
from .._records import (
    ATTRS,
    COLUMNS,
    DURATION_NS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    KIND,
    LEVEL,
    MESSAGE,
    NAME,
    PARENT_ID,
    SERVICE,
    SPAN_ID,
    STATUS,
    TRACE_ID,
    TS,
)
from ..errors import TailClosed
from ._query import Filters
from ._query.sql import as_ns

__all__ = (
    "DEFAULT_HEARTBEAT",
    "DEFAULT_QUEUE_SIZE",
    "Subscription",
    "TailClosed",
    "TailHub",
    "TailStats",
)

_log = logging.getLogger("atrace.collector.tail")

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_HEARTBEAT = 15.0
# Notifications wait this long before their fetch: ingest's in-process publish of the same rows
# usually lands first (no fetch then), and notices arriving together are handled together.
DEFAULT_FETCH_DELAY = 0.05
# Keys of rows delivered lately, to deliver each row once whichever path brings it first.
_RECENT_ROWS = 50_000
# Batches published here lately, by (project, first ts µs, last ts µs, rows): notices to skip.
_RECENT_BATCHES = 10_000
_RECENT_BATCH_SECONDS = 60.0
_MAX_PENDING = 10_000
_MAX_FETCH = 100_000
_RECONNECT_MAX = 30.0


class Subscription:
    """One live-tail reader: rows passing ``filters``, in a queue of at most ``maxsize``."""

    __slots__ = ("_items", "_wake", "closed", "delivered", "dropped", "filters", "maxsize")

    def __init__(self, filters: Filters, maxsize: int) -> None:
        self.filters = filters
        self.maxsize = maxsize
        self.delivered = 0
        self.dropped = 0
        self.closed = False
        self._items: collections.deque[Sequence[Any]] = collections.deque()
        self._wake = asyncio.Event()

    def offer(self, row: Sequence[Any]) -> bool:
        """Queue a row without waiting; a full queue drops it (counted). True when queued."""
        if self.closed:
            return False
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.append(row)
        self.delivered += 1
        self._wake.set()
        return True

    def pending(self) -> int:
        """Rows queued and not yet taken."""
        return len(self._items)

    async def take(self, timeout: float | None = None) -> list[Sequence[Any]]:
        """Every queued row (waiting up to ``timeout`` for one; ``[]`` when none came).

        Raises :class:`TailClosed` once the hub stopped and the queue is empty.
        """
        if not self._items and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        if not self._items:
            raise TailClosed
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        """End the subscription: the reader gets what is queued, then :class:`TailClosed`."""
        self.closed = True
        self._wake.set()


@dataclass(frozen=True)
class TailStats:
    """A snapshot of a hub's counters."""

    subscribers: int
    listening: bool
    published_rows: int
    notifications: int
    notifications_skipped: int
    notifications_dropped: int
    fetches: int
    fetch_errors: int
    fetched_rows: int
    duplicate_rows: int
    delivered: int
    dropped: int


class TailHub:
    """Fans committed rows out to live-tail subscribers of one schema (see the module doc)."""

    def __init__(
        self,
        schema: str,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        heartbeat: float = DEFAULT_HEARTBEAT,
        fetch_delay: float = DEFAULT_FETCH_DELAY,
    ) -> None:
        self.schema = schema
        self.channel = tail_channel(schema)
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.fetch_delay = fetch_delay
        self._subs: dict[str, set[Subscription]] = {}
        self._recent_keys: set[int] = set()
        self._recent_order: collections.deque[int] = collections.deque()
        self._recent_batches: collections.OrderedDict[tuple[Any, ...], float] = (
            collections.OrderedDict()
        )
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._pool: Any = None
        self._dsn: str | None = None
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._fetch_sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {schema}.records WHERE project = $1 "
            "AND ts >= (timestamptz 'epoch' + $2::bigint * interval '1 microsecond') "
            "AND ts <= (timestamptz 'epoch' + $3::bigint * interval '1 microsecond') "
            "AND xmin = $4::text::xid ORDER BY ts LIMIT $5"
        )
        self._counts = collections.Counter[str]()
        self._lost: Any = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, pool: Any, *, dsn: str | None = None) -> None:
        """Start listening for rows committed by any writer.

        With ``dsn`` the hub listens on a connection of its own; without, it holds one of
        ``pool``'s connections for as long as it runs (the pool must then outlive the hub: call
        :meth:`stop` first, and have room for one more connection).
        """
        self._pool = pool
        self._dsn = dsn
        self._stopped = False
        self._wake = asyncio.Event()
        if dsn is None and pool.get_max_size() < 2:
            # Holding the pool's only connection would starve every other request.
            _log.warning(
                "atrace: the live tail hears only this process's rows: its pool has one "
                "connection and no DSN was given to listen on"
            )
            return
        try:
            await self._listen()
        except Exception as exc:
            # The collector still serves; the tail listens once the database answers.
            _log.warning("atrace: live tail cannot listen yet (%s); retrying", exc)
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="atrace-tail")

    async def _listen(self) -> None:
        if self._dsn is not None:
            import asyncpg

            conn = await asyncpg.connect(
                self._dsn, server_settings={"application_name": "atrace-tail"}
            )
            await connection_init(conn)
        else:
            conn = await self._pool.acquire()
        try:
            await conn.add_listener(self.channel, self._on_notify)
            conn.add_termination_listener(self._on_lost)
        except BaseException:
            await self._discard(conn)
            raise
        self._conn = conn

    async def _discard(self, conn: Any) -> None:
        # Hand a connection back (or close our own), never leaving it open on a failure.
        try:
            if self._dsn is not None:
                await asyncio.wait_for(conn.close(), 5.0)
            else:
                await asyncio.wait_for(self._pool.release(conn), 5.0)
        except Exception:
            conn.terminate()
            if self._dsn is None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)

    async def stop(self) -> None:
        """End every subscription and stop listening; safe to call twice."""
        self._stopped = True
        self.close_subscribers()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.remove_termination_listener(self._on_lost)
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.remove_listener(self.channel, self._on_notify)
            await self._discard(conn)
        await self._release_lost()

    close = stop

    async def _release_lost(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            await self._discard(lost)

    def close_subscribers(self) -> None:
        """End every subscription (the application is stopping)."""
        for subs in self._subs.values():
            for sub in subs:
                sub.close()
        self._subs.clear()

    def _on_lost(self, conn: Any) -> None:
        # The listening session died (server restart, network): listen again from a new one.
        # Rows committed in between are not replayed; a tail is live, not a log.
        if self._conn is conn and self._wake is not None:
            self._conn = None
            self._lost = conn  # given back to the pool by the task, which may await
            self._wake.set()

    # -- subscribers -----------------------------------------------------------------------------

    def subscribe(self, filters: Filters) -> Subscription:
        """A new subscription to rows of ``filters.project`` that pass ``filters``."""
        if self._stopped:
            raise TailClosed
        sub = Subscription(filters, self.queue_size)
        self._subs.setdefault(filters.project, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription (its reader went away)."""
        sub.close()
        self._counts["dropped_gone"] += sub.dropped
        self._counts["delivered_gone"] += sub.delivered
        subs = self._subs.get(sub.filters.project)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.filters.project]

    # -- the two sources -------------------------------------------------------------------------

    def publish(self, project: str, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of ``project`` just committed in this process (COLUMNS order; ts in ns).

        Never waits and never raises for a slow subscriber; costs nothing while nobody tails
        the project.
        """
        if not rows or project not in self._subs:
            return
        self._counts["published_rows"] += len(rows)
        try:
            lo = min(r[TS] for r in rows) // 1000
            hi = max(r[TS] for r in rows) // 1000
        except TypeError:
            pass  # not integer ns: no notice will match, the row keys still deduplicate
        else:
            self._remember_batch((project, lo, hi, len(rows)))
        self._deliver(project, rows)

    def _remember_batch(self, key: tuple[Any, ...]) -> None:
        now = time.monotonic()
        batches = self._recent_batches
        batches[key] = now
        batches.move_to_end(key)
        while batches and (
            len(batches) > _RECENT_BATCHES
            or next(iter(batches.values())) < now - _RECENT_BATCH_SECONDS
        ):
            batches.popitem(last=False)

    def _deliver(self, project: str, rows: Sequence[Sequence[Any]]) -> None:
        subs = self._subs.get(project)
        if not subs:
            return
        for row in rows:
            attrs = _attrs(row[ATTRS])
            # A 64-bit hash, not the key itself: 50 000 keys with their messages would be big.
            key = hash((project, *_row_key(row, attrs)))
            if key in self._recent_keys:
                self._counts["duplicate_rows"] += 1
                continue
            self._remember_row(key)
            for sub in subs:
                if sub.filters.matches(row, attrs):
                    sub.offer(row)

    def _remember_row(self, key: int) -> None:
        self._recent_keys.add(key)
        self._recent_order.append(key)
        if len(self._recent_order) > _RECENT_ROWS:
            self._recent_keys.discard(self._recent_order.popleft())

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._counts["notifications"] += 1
        try:
            notice = orjson.loads(payload)
            project = notice["p"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._counts["notifications_skipped"] += 1
            return
        if project not in self._subs:
            self._counts["notifications_skipped"] += 1
            return
        if len(self._pending) >= _MAX_PENDING:
            self._counts["notifications_dropped"] += 1
            return
        self._pending.append(notice)
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = 0.5
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            if self._conn is None:
                await self._release_lost()
                try:
                    await self._listen()
                    backoff = 0.5
                except Exception as exc:
                    _log.warning("atrace: live tail cannot listen (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _RECONNECT_MAX)
                    self._wake.set()
                    continue
            if not self._pending:
                continue
            await asyncio.sleep(self.fetch_delay)
            notices = list(self._pending)
            self._pending.clear()
            for notice in _unique(notices):
                await self._fetch(notice)

    async def _fetch(self, notice: dict[str, Any]) -> None:
        try:
            project, xid = notice["p"], str(int(notice["x"]))
            lo, hi, n = int(notice["a"]), int(notice["b"]), int(notice["n"])
        except (KeyError, TypeError, ValueError):
            self._counts["notifications_skipped"] += 1
            return
        published_here = self._recent_batches.pop((project, lo, hi, n), None) is not None
        if project not in self._subs or published_here:
            self._counts["notifications_skipped"] += 1
            return
        conn = self._conn
        if conn is None:
            return
        self._counts["fetches"] += 1
        try:
            rows = await conn.fetch(self._fetch_sql, project, lo, hi, xid, _MAX_FETCH)
        except Exception as exc:
            self._counts["fetch_errors"] += 1
            _log.warning("atrace: live tail could not fetch announced rows: %s", exc)
            return
        self._counts["fetched_rows"] += len(rows)
        self._deliver(project, [tuple(r) for r in rows])

    # -- introspection ---------------------------------------------------------------------------

    def statistics(self) -> TailStats:
        """Counters since the hub was made."""
        live = [s for subs in self._subs.values() for s in subs]
        c = self._counts
        return TailStats(
            subscribers=len(live),
            listening=self._conn is not None,
            published_rows=c["published_rows"],
            notifications=c["notifications"],
            notifications_skipped=c["notifications_skipped"],
            notifications_dropped=c["notifications_dropped"],
            fetches=c["fetches"],
            fetch_errors=c["fetch_errors"],
            fetched_rows=c["fetched_rows"],
            duplicate_rows=c["duplicate_rows"],
            delivered=c["delivered_gone"] + sum(s.delivered for s in live),
            dropped=c["dropped_gone"] + sum(s.dropped for s in live),
        )


def _unique(notices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for n in notices:
        key = (n.get("p"), n.get("x"), n.get("a"), n.get("b"), n.get("n"))
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out


def _ts_us(value: Any) -> int:
    # int ns (atrace's codec, and published rows), or a datetime from a plain connection.
    return value // 1000 if isinstance(value, int) else as_ns(value) // 1000


def _row_key(row: Sequence[Any], attrs: Any) -> tuple[Any, ...]:
    # What identifies a row on both paths: the stored microsecond and everything else a caller
    # sets. Emitting is fast enough for two records of a loop to share a microsecond and differ
    # only in their attributes, so those count too, in one form for orjson's and jsonb's text.
    trace_id = row[TRACE_ID]
    if isinstance(trace_id, uuid.UUID):
        trace_id = trace_id.hex
    canonical = orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS) if attrs else None
    return (
        _ts_us(row[TS]),
        row[KIND],
        row[LEVEL],
        trace_id,
        row[SPAN_ID],
        row[PARENT_ID],
        row[DURATION_NS],
        row[STATUS],
        row[SERVICE],
        row[NAME],
        row[MESSAGE],
        canonical,
        row[ERROR_TYPE],
        row[ERROR_MESSAGE],
    )


def _attrs(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
