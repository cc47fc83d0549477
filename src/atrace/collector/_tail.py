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

What one collector spends on tails is bounded:

* **subscribers**: at most ``max_subscribers`` in all (past it, :class:`TailFull`, which
  ``GET /v1/tail`` answers 503 with ``Retry-After``) and ``max_per_key`` per API key (past it,
  429 with ``Retry-After``: that client holds enough);
* **each queue**: at most ``queue_size`` rows (past it the newest rows are lost, counted in
  ``Subscription.dropped`` and told to the reader as a ``: dropped`` comment) and at most
  ``queue_bytes`` bytes of serialised events (past it, with events still waiting, the reader is
  too slow for the stream: it is dropped, its queue freed at once, and the stream ends with
  ``event: error``; a reader that has caught up takes what fits of a larger batch, the rest
  counted as dropped);
* **all queues**: at most ``total_bytes`` of events held for all readers, queued or being
  written; past it, a reader holding more than its equal share is dropped as too slow;
* **fan-out**: each row is serialised once, whatever the number of subscribers, and matched once
  per distinct set of filters; a reader is handed a batch's rows at once (one wake-up, one
  write). Work past a small budget runs in a task that yields to the loop after each slice of
  rows matched and each ``_SUB_SLICE`` readers served, so health checks and ingest answer while
  thousands of subscribers are fed; rows waiting for that task are bounded too
  (``_MAX_BACKLOG_ROWS``).

A row that cannot be serialised (nested deeper than orjson goes, a value it cannot write) is
skipped and counted, never fatal. The listening task is supervised: an unexpected error is logged
and counted (``restarts``) and the task starts again; :attr:`TailHub.healthy` and
:meth:`TailHub.health` say how it is. Every ``key_recheck`` seconds one task of the hub checks
the API key of every open stream (once per distinct key) through the collector's
:class:`~atrace.collector._auth.KeyStore` (whose cache trusts an answer for its ``ttl``), so a
revoked key's streams end within ``ttl + key_recheck`` with ``event: error``, and ends the
streams whose reader went away; the streams themselves wake only for events and heartbeats.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

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
from ..errors import AuthError, RateLimited, TailClosed, Unavailable
from ._auth import parse_key, request_key
from ._query import Filters, record_json
from ._query.sql import as_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._auth import KeyStore
    from ._prometheus import Metrics

__all__ = (
    "DEFAULT_HEARTBEAT",
    "DEFAULT_KEY_RECHECK",
    "DEFAULT_MAX_PER_KEY",
    "DEFAULT_MAX_SUBSCRIBERS",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "Subscription",
    "TailClosed",
    "TailFull",
    "TailHub",
    "TailStats",
)

_log = logging.getLogger("atrace.collector.tail")

MiB = 1024 * 1024
DEFAULT_QUEUE_SIZE = 1000
# Serialised events one subscriber may have waiting; past it the subscriber is dropped.
DEFAULT_QUEUE_BYTES = 4 * MiB
# Serialised events held for all subscribers at once (queued, or being written).
DEFAULT_TOTAL_BYTES = 256 * MiB
DEFAULT_MAX_SUBSCRIBERS = 1000
DEFAULT_MAX_PER_KEY = 20
DEFAULT_HEARTBEAT = 15.0
# Seconds between checks of an open stream's API key (answered from the key cache mostly).
DEFAULT_KEY_RECHECK = 1.0
DEFAULT_RETRY_AFTER = 1
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
# Fan-out: filter checks (rows x groups, each matched row serialised) done at once before
# yielding to the loop; a batch whose whole fan-out (rows x (groups + readers)) fits in
# _INLINE_WORK is delivered inside publish.
_SLICE_WORK = 500
_INLINE_WORK = 4_000
# Readers handed their rows between two yields of the fan-out task.
_SUB_SLICE = 50
# Writes to readers started at once, and the seconds one may hold its turn (a reader slow to
# take its bytes finishes its write outside, without keeping the others waiting).
_WRITE_SLOTS = 16
_SLOT_HOLD = 0.05
# Rows waiting for the fan-out task; a batch arriving past it is lost (counted, and told to
# the readers of its project as dropped rows).
_MAX_BACKLOG_ROWS = 200_000
# Seconds the last event of a dropped stream may take to leave; then the connection is cut.
_FINAL_WRITE_TIMEOUT = 2.0
_RESTART_MAX = 30.0


class TailFull(Exception):
    """No room for another subscription: ``per_key`` says whether the key's own bound (429)
    or the collector's (503) was reached."""

    def __init__(self, message: str, *, per_key: bool) -> None:
        super().__init__(message)
        self.per_key = per_key


class Subscription:
    """One live-tail reader: rows passing ``filters``, in a queue of at most ``maxsize`` rows
    and ``max_bytes`` bytes of serialised events."""

    __slots__ = (
        "_budget",
        "_chunks",
        "_failed",
        "_gone",
        "_key",
        "_listed",
        "_queued",
        "_wake",
        "cause",
        "closed",
        "delivered",
        "dropped",
        "filters",
        "held",
        "max_bytes",
        "maxsize",
        "owner",
        "queued_bytes",
        "reason",
    )

    def __init__(
        self,
        filters: Filters,
        maxsize: int,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        owner: str | None = None,
        budget: _Budget | None = None,
    ) -> None:
        self.filters = filters
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.owner = owner
        self.delivered = 0
        self.dropped = 0
        self.queued_bytes = 0
        # Bytes counted in the hub's budget: queued, or taken and not yet written.
        self.held = 0
        self._budget = budget if budget is not None else _Budget(None)
        # Set by the stream serving it: the API key to re-check, and whether the reader left.
        self._key: str | None = None
        self._gone: Callable[[], bool] | None = None
        self.closed = False
        # Why the hub ended this subscription (None: it did not), and the cause as a label.
        self.reason: str | None = None
        self.cause: str | None = None
        # The queue: pieces of batches shared by every reader they were handed to, as (rows,
        # events, start, stop); a batch is never copied per reader, and a garbage collection
        # walks one entry per piece, not one per row and reader.
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._queued = 0  # rows in the queue
        self._wake = asyncio.Event()
        self._failed: asyncio.Future[None] | None = None
        self._listed = False

    def offer(self, row: Sequence[Any], payload: bytes | None = None) -> bool:
        """Queue a row (and its serialised event) without waiting; True when queued (see
        :meth:`offer_many`)."""
        if payload is None:
            payload = sse_event(row)
        return self.offer_many((row,), (payload,), (0, len(payload))) == 1

    def offer_many(
        self,
        rows: Sequence[Sequence[Any]],
        payloads: Sequence[bytes],
        sizes: Sequence[int],
    ) -> int:
        """Queue rows and their serialised events at once, without waiting; ``sizes`` are the
        running totals of the events' lengths (``sizes[i]``: the first ``i`` events). Returns
        how many were queued.

        A queue full of rows loses the rest (counted in ``dropped``). Past ``max_bytes``: with
        events still waiting, the subscription ends (the reader is too slow for the stream);
        with none, what fits is queued and the rest counted as dropped. Past the hub's budget
        for all readers, a reader holding more than its share ends as too slow.
        """
        if self.closed:
            return 0
        n = len(rows)
        k = min(n, self.maxsize - self._queued)
        if k < n:
            self.dropped += n - max(k, 0)
        if k <= 0:
            return 0
        size = sizes[k]
        room = self.max_bytes - self.queued_bytes
        if size > room:
            if self._queued:
                self.fail(
                    "slow",
                    f"too slow: more than {self.max_bytes} bytes of events waited for this reader",
                )
                return 0
            fit = max(1, bisect.bisect_right(sizes, room, 0, k + 1) - 1)
            self.dropped += k - fit
            k, size = fit, sizes[fit]
        budget = self._budget
        if budget.over(size) and self.held + size > budget.share():
            self.fail(
                "slow",
                "too slow: the live tail holds all the events it may for its readers, and more "
                "than this reader's share waited for it",
            )
            return 0
        self._chunks.append((rows, payloads, 0, k))
        self._queued += k
        self.queued_bytes += size
        self.held += size
        budget.used += size
        self.delivered += k
        self._wake.set()
        return k

    def written(self, n: int) -> None:
        """``n`` bytes of taken events have left: they no longer count in the hub's budget."""
        n = min(n, self.held)
        self.held -= n
        self._budget.used -= n

    def peek(self) -> list[Sequence[Any]]:
        """The rows queued now, in order, left in the queue."""
        return [row for rows, _, start, stop in self._chunks for row in rows[start:stop]]

    def pending(self) -> int:
        """Rows queued and not yet taken."""
        return self._queued

    async def _wait(self, timeout: float | None) -> bool:
        if not self._queued and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        if not self._queued:
            raise TailClosed
        return True

    async def take(self, timeout: float | None = None) -> list[Sequence[Any]]:
        """Every queued row (waiting up to ``timeout`` for one; ``[]`` when none came).

        Raises :class:`TailClosed` once the subscription ended and the queue is empty.
        """
        if not await self._wait(timeout):
            return []
        rows = self.peek()
        self._empty()
        self.written(self.held)  # rows handed over in process: nothing left to write
        return rows

    async def take_events(self, timeout: float | None = None) -> list[bytes]:
        """Like :meth:`take`, the queued rows as their serialised server-sent events (joined
        a batch at a time)."""
        if not await self._wait(timeout):
            return []
        return [b"".join(events[start:stop]) for _, events, start, stop in self._empty()]

    def _empty(self) -> list[_Chunk]:
        # What is queued, and the queue emptied.
        chunks = list(self._chunks)
        self._chunks.clear()
        self._queued = 0
        self.queued_bytes = 0
        return chunks

    def close(self) -> None:
        """End the subscription: the reader gets what is queued, then :class:`TailClosed`."""
        self.closed = True
        self._wake.set()

    def fail(self, cause: str, reason: str) -> None:
        """End the subscription at once, freeing its queue: the reader gets
        :class:`TailClosed` and ``reason`` says why (``cause`` is its short label)."""
        if self.reason is None:
            self.reason, self.cause = reason, cause
        self._chunks.clear()
        self._queued = 0
        self.written(self.queued_bytes)
        self.queued_bytes = 0
        self.close()
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def failed(self) -> asyncio.Future[None]:
        """A future done once :meth:`fail` was called (made in the running loop)."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
            if self.reason is not None:
                self._failed.set_result(None)
        return self._failed


class _Budget:
    """Bytes of events held for all of a hub's readers (queued, or taken and being written),
    against ``limit`` (None: no bound)."""

    __slots__ = ("limit", "readers", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.readers = 0

    def over(self, size: int) -> bool:
        """Whether holding ``size`` bytes more would pass the bound."""
        return self.limit is not None and self.used + size > self.limit

    def share(self) -> float:
        """One reader's equal share of the bound."""
        return float("inf") if self.limit is None else self.limit / max(1, self.readers)


# Rows matched by one group: the rows, their events, and the events' running lengths.
_Batch = tuple[list[Sequence[Any]], list[bytes], list[int]]
# A piece of a batch in a reader's queue: rows, events, start, stop.
_Chunk = tuple[Sequence[Sequence[Any]], Sequence[bytes], int, int]


class _Group:
    """Subscriptions of one project sharing equal filters: rows are matched once for all."""

    __slots__ = ("filters", "subs")

    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self.subs: set[Subscription] = set()


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
    # Bytes of serialised events queued for readers now.
    queued_bytes: int = 0
    # Subscriptions ended by the hub: the reader too slow; its API key no longer valid.
    ended_slow: int = 0
    ended_revoked: int = 0
    # Subscriptions refused: the key's bound reached; the collector's bound reached.
    refused_per_key: int = 0
    refused_total: int = 0
    # Rows skipped: not serialisable (too deep, bad values); lost past the fan-out backlog.
    unserialisable_rows: int = 0
    backlog_dropped_rows: int = 0
    # Rows waiting for the fan-out task now.
    backlog_rows: int = 0
    # Times the listening task failed unexpectedly and was started again.
    restarts: int = 0
    healthy: bool = True


class TailHub:
    """Fans committed rows out to live-tail subscribers of one schema (see the module doc)."""

    def __init__(
        self,
        schema: str,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        total_bytes: int | None = DEFAULT_TOTAL_BYTES,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        max_per_key: int = DEFAULT_MAX_PER_KEY,
        heartbeat: float = DEFAULT_HEARTBEAT,
        fetch_delay: float = DEFAULT_FETCH_DELAY,
        keys: KeyStore | None = None,
        key_recheck: float = DEFAULT_KEY_RECHECK,
        retry_after: int = DEFAULT_RETRY_AFTER,
    ) -> None:
        self.schema = schema
        self.channel = tail_channel(schema)
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._budget = _Budget(total_bytes)
        self._slots = asyncio.Semaphore(_WRITE_SLOTS)
        self._watch: asyncio.Task[None] | None = None
        self.max_subscribers = max_subscribers
        self.max_per_key = max_per_key
        self.heartbeat = heartbeat
        self.fetch_delay = fetch_delay
        self.keys = keys
        self.key_recheck = key_recheck
        self.retry_after = retry_after
        # project -> filters key -> the subscriptions sharing those filters.
        self._subs: dict[str, dict[Any, _Group]] = {}
        self._count = 0
        self._per_owner = collections.Counter[str]()
        self._recent_keys: set[int] = set()
        self._recent_order: collections.deque[int] = collections.deque()
        self._recent_batches: collections.OrderedDict[tuple[Any, ...], float] = (
            collections.OrderedDict()
        )
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._backlog: collections.deque[tuple[str, Sequence[Sequence[Any]]]] = collections.deque()
        self._backlog_rows = 0
        self._fanout: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._pool: Any = None
        self._dsn: str | None = None
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._listens = False
        self._failing = False
        self._stopped = False
        self._fetch_sql = (
            f"SELECT {', '.join(COLUMNS)}, ts_frac FROM {schema}.records WHERE project = $1 "
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
        self._listens = True
        try:
            await self._listen()
        except Exception as exc:
            # The collector still serves; the tail listens once the database answers.
            _log.warning("atrace: live tail cannot listen yet (%s); retrying", exc)
            self._wake.set()
        self._task = asyncio.create_task(self._supervise(), name="atrace-tail")

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
        for attr in ("_task", "_fanout", "_watch"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._backlog.clear()
        self._backlog_rows = 0
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
        for sub in self._all():
            sub.close()
            self._forget(sub)
        self._subs.clear()

    def _on_lost(self, conn: Any) -> None:
        # The listening session died (server restart, network): listen again from a new one.
        # Rows committed in between are not replayed; a tail is live, not a log.
        if self._conn is conn and self._wake is not None:
            self._conn = None
            self._lost = conn  # given back to the pool by the task, which may await
            self._wake.set()

    # -- subscribers -----------------------------------------------------------------------------

    def _all(self) -> list[Subscription]:
        return [s for groups in self._subs.values() for g in groups.values() for s in g.subs]

    def subscribe(self, filters: Filters, *, owner: str | None = None) -> Subscription:
        """A new subscription to rows of ``filters.project`` that pass ``filters``.

        ``owner`` (an API key id) is counted against ``max_per_key``. Raises
        :class:`TailClosed` once the hub stopped and :class:`TailFull` past a bound.
        """
        if self._stopped:
            raise TailClosed
        if owner is not None and self._per_owner[owner] >= self.max_per_key:
            self._counts["refused_per_key"] += 1
            raise TailFull(
                f"this API key already has {self.max_per_key} live tails open", per_key=True
            )
        if self._count >= self.max_subscribers:
            self._counts["refused_total"] += 1
            raise TailFull(
                f"the collector already serves {self.max_subscribers} live tails", per_key=False
            )
        sub = Subscription(filters, self.queue_size, self.queue_bytes, owner, self._budget)
        groups = self._subs.setdefault(filters.project, {})
        key = _filters_key(filters, sub)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(filters)
        group.subs.add(sub)
        sub._listed = True
        self._budget.readers += 1
        self._count += 1
        if owner is not None:
            self._per_owner[owner] += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription (its reader went away); safe to call twice."""
        sub.close()
        self._forget(sub)

    def end(self, sub: Subscription, cause: str, reason: str) -> None:
        """End a subscription now with ``reason`` told to its reader, counted under ``cause``
        (``slow``, ``revoked``)."""
        sub.fail(cause, reason)
        self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if not sub._listed:
            return
        sub._listed = False
        self._budget.readers -= 1
        sub.written(sub.held)
        self._count -= 1
        if sub.owner is not None:
            self._per_owner[sub.owner] -= 1
            if self._per_owner[sub.owner] <= 0:
                del self._per_owner[sub.owner]
        if sub.cause is not None:
            self._counts[f"ended_{sub.cause}"] += 1
        self._counts["dropped_gone"] += sub.dropped
        self._counts["delivered_gone"] += sub.delivered
        groups = self._subs.get(sub.filters.project)
        if groups is None:
            return
        for key, group in list(groups.items()):
            if sub in group.subs:
                group.subs.discard(sub)
                if not group.subs:
                    del groups[key]
                break
        if not groups:
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
        self._submit(project, rows)

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

    def _submit(self, project: str, rows: Sequence[Sequence[Any]]) -> None:
        # Small work, nothing waiting before it: delivered now. Otherwise in order, by the
        # fan-out task, in slices.
        groups = self._subs.get(project)
        if not groups:
            return
        work = len(rows) * (len(groups) + sum(len(g.subs) for g in groups.values()))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._deliver(project, rows)  # no loop (a plain caller): nothing to yield to
            return
        if not self._backlog and work <= _INLINE_WORK:
            self._deliver(project, rows)
            return
        if self._backlog_rows + len(rows) > _MAX_BACKLOG_ROWS:
            self._counts["backlog_dropped_rows"] += len(rows)
            for group in groups.values():
                for sub in group.subs:
                    sub.dropped += len(rows)
            return
        self._backlog.append((project, rows))
        self._backlog_rows += len(rows)
        if self._fanout is None or self._fanout.done():
            self._fanout = asyncio.create_task(self._fan_out(), name="atrace-tail-fanout")

    async def _fan_out(self) -> None:
        while self._backlog:
            project, rows = self._backlog[0]
            done = 0
            try:
                while done < len(rows):
                    groups = self._subs.get(project)
                    if not groups:
                        break
                    step = max(1, _SLICE_WORK // len(groups))
                    matched = self._match(project, groups, rows[done : done + step])
                    done += step
                    await asyncio.sleep(0)
                    for group, batch in matched:
                        subs = list(group.subs)
                        for start in range(0, len(subs), _SUB_SLICE):
                            self._hand(subs[start : start + _SUB_SLICE], batch)
                            await asyncio.sleep(0)
            except Exception:
                # A bug, not a row: the rows of this batch are lost, the tail goes on.
                self._counts["fanout_errors"] += 1
                _log.exception("atrace: the live tail failed to fan rows out")
            finally:
                self._backlog.popleft()
                self._backlog_rows -= len(rows)

    def _deliver(self, project: str, rows: Sequence[Sequence[Any]]) -> None:
        groups = self._subs.get(project)
        if not groups:
            return
        for group, batch in self._match(project, groups, rows):
            self._hand(list(group.subs), batch)

    def _hand(self, subs: list[Subscription], batch: _Batch) -> None:
        # A group's matched rows to each of its readers at once.
        rows, payloads, sizes = batch
        for sub in subs:
            if not sub.offer_many(rows, payloads, sizes) and sub.reason is not None:
                self._forget(sub)

    def _match(
        self, project: str, groups: dict[Any, _Group], rows: Sequence[Sequence[Any]]
    ) -> list[tuple[_Group, _Batch]]:
        """Per group of filters, the rows it matches (new ones only) with their events, each
        row serialised once."""
        found: dict[int, tuple[_Group, _Batch]] = {}
        for row in rows:
            try:
                attrs = _attrs(row[ATTRS])
                # A 64-bit hash, not the key itself: 50 000 keys with their messages would be
                # big.
                key = hash((project, *_row_key(row, attrs)))
            except Exception:
                self._counts["unserialisable_rows"] += 1
                continue
            if key in self._recent_keys:
                self._counts["duplicate_rows"] += 1
                continue
            self._remember_row(key)
            payload: bytes | None = None
            for group in list(groups.values()):
                try:
                    if not group.filters.matches(row, attrs):
                        continue
                    if payload is None:
                        payload = sse_event(row)
                except Exception:
                    self._counts["unserialisable_rows"] += 1
                    break
                entry = found.get(id(group))
                if entry is None:
                    entry = found[id(group)] = (group, ([], [], [0]))
                matched, payloads, sizes = entry[1]
                matched.append(row)
                payloads.append(payload)
                sizes.append(sizes[-1] + len(payload))
        return list(found.values())

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

    async def _supervise(self) -> None:
        # The listening task: an unexpected error is logged, counted and survived.
        assert self._wake is not None
        backoff = 0.5
        while not self._stopped:
            try:
                await self._run()
                return
            except Exception:
                self._counts["restarts"] += 1
                self._failing = True
                _log.exception("atrace: the live tail's listener failed; starting it again")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RESTART_MAX)
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
            self._failing = False
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
        self._submit(project, [tuple(r) for r in rows])

    # -- the SSE stream --------------------------------------------------------------------------

    async def stream(self, request: web.Request, filters: Filters) -> web.StreamResponse:
        """Serve ``GET /v1/tail``: ``filters``' rows as server-sent events until the reader
        leaves or the hub ends the subscription (then a last ``event: error`` says why).

        Past the key's bound: 429; past the collector's: 503; both with ``Retry-After``.
        """
        key = request_key(request) if self.keys is not None else None
        parsed = parse_key(key) if key else None
        try:
            sub = self.subscribe(filters, owner=parsed[0] if parsed else None)
        except TailFull as exc:
            if exc.per_key:
                raise RateLimited(
                    str(exc), self.retry_after, "concurrency", bound="max_tail_per_key"
                ) from None
            raise Unavailable(str(exc), reason="tail_full", bound="max_tail_subscribers") from None
        sub._key = key
        sub._gone = lambda: request.transport is None or request.transport.is_closing()
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_streams(), name="atrace-tail-keys")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # Proxies such as nginx would otherwise hold events back in their buffers.
                "X-Accel-Buffering": "no",
            }
        )
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            # Subscribed before this line is sent: a client that has read it misses nothing
            # after.
            await response.write(b": tail started\n\n")
            reported = 0
            last_sent = loop.time()
            while True:
                wait = self.heartbeat - (loop.time() - last_sent)
                try:
                    events = await sub.take_events(max(0.0, wait))
                except TailClosed:
                    break
                if request.transport is None or request.transport.is_closing():
                    break  # the reader went away: its slot is free at once
                if not events and sub.dropped <= reported:
                    if loop.time() - last_sent >= self.heartbeat:
                        if not await _send(response, sub, b": heartbeat\n\n", self._slots):
                            break
                        last_sent = loop.time()
                    continue
                chunk = b"".join(events)
                taken = len(chunk)
                if sub.dropped > reported:
                    # A comment, so EventSource readers skip it; atrace's clients count it.
                    notice = f": dropped {sub.dropped - reported} total {sub.dropped}\n\n"
                    chunk += notice.encode()
                    reported = sub.dropped
                if not await _send(response, sub, chunk, self._slots):
                    break
                sub.written(taken)
                last_sent = loop.time()
            if sub.reason is not None:
                last = b"event: error\ndata: " + orjson.dumps({"error": sub.reason}) + b"\n\n"
                try:
                    await asyncio.wait_for(response.write(last), _FINAL_WRITE_TIMEOUT)
                except asyncio.TimeoutError:
                    # The reader does not read: what is buffered for it goes with the connection.
                    if request.transport is not None:
                        request.transport.abort()
        except ConnectionError:
            pass  # the reader went away
        finally:
            self.unsubscribe(sub)
        return response

    async def _watch_streams(self) -> None:
        """Every ``key_recheck`` seconds: end the streams whose reader left, and those whose
        API key is no longer valid (one check per distinct key)."""
        while self._count:
            await asyncio.sleep(self.key_recheck)
            by_key: dict[str, list[Subscription]] = {}
            for sub in self._all():
                if sub._gone is not None and sub._gone():
                    self.unsubscribe(sub)
                elif sub._key is not None:
                    by_key.setdefault(sub._key, []).append(sub)
            for key, subs in by_key.items():
                if not await self._key_valid(key):
                    for sub in subs:
                        self.end(sub, "revoked", "the API key is no longer valid")

    async def _key_valid(self, key: str) -> bool:
        assert self.keys is not None
        try:
            await self.keys.check(self._pool, key)
        except AuthError:
            return False
        except Exception as exc:
            # PostgreSQL unreachable: the stream goes on and the key is asked again next time.
            _log.debug("atrace: live tail could not re-check a key: %s", exc)
        return True

    # -- introspection ---------------------------------------------------------------------------

    @property
    def restarts(self) -> int:
        """Times the listening task failed unexpectedly and was started again."""
        return self._counts["restarts"]

    @property
    def healthy(self) -> bool:
        """Whether the hub serves: not stopped, and when it listens, listening and not failing."""
        if self._stopped:
            return False
        if not self._listens:
            return True
        task = self._task
        return task is not None and not task.done() and not self._failing and bool(self._conn)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports of the live tail."""
        return {
            "status": "ok" if self.healthy else "degraded",
            "listening": self._conn is not None,
            "subscribers": self._count,
            "restarts": self.restarts,
        }

    def statistics(self) -> TailStats:
        """Counters since the hub was made."""
        live = self._all()
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
            queued_bytes=sum(s.queued_bytes for s in live),
            ended_slow=c["ended_slow"],
            ended_revoked=c["ended_revoked"],
            refused_per_key=c["refused_per_key"],
            refused_total=c["refused_total"],
            unserialisable_rows=c["unserialisable_rows"],
            backlog_dropped_rows=c["backlog_dropped_rows"],
            backlog_rows=self._backlog_rows,
            restarts=c["restarts"],
            healthy=self.healthy,
        )

    def export(self, metrics: Metrics) -> None:
        """Publish the hub's figures in the collector's Prometheus metrics."""
        c = self._counts
        metrics.gauge("tail_subscribers", lambda: self._count)
        metrics.gauge("tail_queued_bytes", lambda: sum(s.queued_bytes for s in self._all()))
        metrics.gauge("tail_held_bytes", lambda: self._budget.used)
        metrics.gauge("tail_backlog_rows", lambda: self._backlog_rows)
        metrics.gauge("tail_healthy", lambda: 1 if self.healthy else 0)
        metrics.counter(
            "tail_ended_total",
            "Live tails the collector ended, by cause.",
            "cause",
            lambda: {"slow": c["ended_slow"], "revoked": c["ended_revoked"]},
        )
        metrics.counter(
            "tail_refused_total",
            "Live tails refused, by the bound reached.",
            "cause",
            lambda: {"per_key": c["refused_per_key"], "total": c["refused_total"]},
        )
        metrics.counter(
            "tail_skipped_rows_total",
            "Rows the live tail could not deliver, by cause.",
            "cause",
            lambda: {
                "unserialisable": c["unserialisable_rows"],
                "backlog": c["backlog_dropped_rows"],
            },
        )
        metrics.counter(
            "tail_restarts_total",
            "Times the live tail's listener failed and was started again.",
            None,
            lambda: {"": c["restarts"]},
        )


async def _send(
    response: web.StreamResponse, sub: Subscription, data: bytes, slots: asyncio.Semaphore
) -> bool:
    # Write, unless the hub ends the subscription first: a reader that stopped reading must not
    # hold its writer (and the hub's bound) while the socket's buffers stay full. At most a
    # few writes start at once (``slots``), each holding its slot for _SLOT_HOLD at most: a
    # batch fanned out to thousands of readers is written in turns, not in one long turn of
    # the loop that would keep every other request waiting.
    async with slots:
        write = asyncio.ensure_future(response.write(data))
        failed = sub.failed()
        done, _ = await asyncio.wait(
            (write, failed), timeout=_SLOT_HOLD, return_when=asyncio.FIRST_COMPLETED
        )
    if not done:
        await asyncio.wait((write, failed), return_when=asyncio.FIRST_COMPLETED)
    if write.done():
        write.result()
        return True
    write.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await write
    return False


def sse_event(row: Sequence[Any]) -> bytes:
    """One row as its server-sent event (raises for a row orjson cannot write)."""
    return b"data: " + orjson.dumps(record_json(row)) + b"\n\n"


def _filters_key(filters: Filters, sub: Subscription) -> Any:
    # Equal filters share a group; filters that cannot be keyed get a group of their own.
    try:
        attrs = orjson.dumps(dict(filters.attrs), option=orjson.OPT_SORT_KEYS)
        key = (
            filters.service,
            filters.min_level,
            filters.kinds,
            filters.span_kind,
            filters.q,
            attrs,
        )
        return (*key, filters.trace_id, filters.since, filters.until)
    except TypeError:
        return id(sub)


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
