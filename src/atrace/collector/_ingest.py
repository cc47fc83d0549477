"""Ingest: ``POST /v1/ingest`` (atrace batches), ``/v1/traces`` and ``/v1/logs`` (OTLP/HTTP).

Each request is read under limits (the body as sent, its gzip inflation, the record count),
decoded whole (malformed input is refused with nothing written), then stored in one transaction:
the ledger entry ``(project, batch_id)`` first (already there: stored before, nothing written),
then the rows by binary COPY with the ``project`` column taken from the API key, never from the
body. Committed rows go to the live tail.

Between decoding and storing, every path (native msgpack and JSON, OTLP protobuf and JSON,
traces and logs) applies the same per-record bounds (:mod:`atrace._formats.bounds`):

- attributes are *sanitised*, never refused: a value over ``max_value_bytes`` as JSON, or
  attributes over ``max_attrs_bytes`` as a whole, become a marker object, and nesting past
  ``max_depth`` becomes ``"<too deep>"``;
- a record whose timestamp lies more than ``late_window`` seconds before or ``early_window`` seconds
  after the time of ingest is *rejected* on its own; the rest of the request is stored.

The answer counts both: ``/v1/ingest`` adds ``"rejected": {"timestamp": k}`` and
``"truncated": {"attrs": c}`` when either is not zero; OTLP answers with ``partial_success``
(``rejected_spans`` / ``rejected_log_records`` and an ``error_message``). Partitions are made
ahead to cover ``early_window``, so an accepted record always has its day's partition and no
sender's clock can block a day's partition for the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from .._delivery.classify import refused_data
from .._formats.bounds import (
    AHEAD_NS,
    LATE_NS,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    bound_rows,
    split_window,
)
from .._formats.pgcopy import HEADER, TRAILER, copy_columns, encode_rows
from .._postgres.schema import PARTITION_DAYS_AHEAD, ensure_partitions
from .._postgres.session import store_resources
from .._records import Row
from ..errors import Unavailable, WireError
from ._limits import Admission, Limits
from ._prometheus import Metrics
from ._state import POOL, PROJECT, TAIL, database

__all__ = ("INGEST", "Ingestor", "add_ingest_routes", "otlp_batch_id", "read_body")

_log = logging.getLogger("atrace.collector")
_NS_PER_DAY = 86_400 * 1_000_000_000
_CHUNK = 64 * 1024
# Bytes inflated at a time between checks of the in-flight bytes bound.
_STEP = 1024 * 1024
_GZIP = 16 + zlib.MAX_WBITS
# A native batch without a Content-Type is msgpack.
_DEFAULT_NATIVE = "application/msgpack"
_OTLP_TYPES = {"application/x-protobuf": "protobuf", "application/json": "json"}
# An empty Export{Trace,Logs}ServiceResponse: full success, no partial_success.
_OTLP_OK = {"protobuf": b"", "json": b"{}"}
_NS = 1_000_000_000
_MAX_AHEAD_NS = 28 * _NS_PER_DAY


class Decoded:
    """What a request's body decoded to: its batch id, the rows to store, what was cut, and the
    documents of the resources and scopes its rows name (id → JSON bytes)."""

    __slots__ = ("batch_id", "rejected", "resources", "rows", "truncated")

    def __init__(
        self,
        batch_id: uuid.UUID,
        rows: list[Row],
        truncated: int = 0,
        rejected: int = 0,
        resources: dict[int, bytes] | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.rows = rows
        self.truncated = truncated
        self.rejected = rejected
        self.resources = resources


class Bounds:
    """The per-record bounds of a collector, read from its :class:`Limits` (see module doc)."""

    __slots__ = ("ahead_ns", "late_ns", "max_attrs_bytes", "max_depth", "max_value_bytes")

    def __init__(self, limits: Limits) -> None:
        # getattr: fields a Limits may not declare take the defaults of atrace._formats.bounds.
        self.max_attrs_bytes: int = limits.max_attrs_bytes
        self.max_value_bytes: int = getattr(limits, "max_value_bytes", MAX_VALUE_BYTES)
        self.max_depth: int = getattr(limits, "max_depth", MAX_DEPTH)
        self.late_ns = int(getattr(limits, "late_window", LATE_NS / _NS) * _NS)
        # At most _MAX_AHEAD_NS: partitions are made ahead for every accepted day.
        ahead = int(getattr(limits, "early_window", AHEAD_NS / _NS) * _NS)
        self.ahead_ns = min(ahead, _MAX_AHEAD_NS)

    def rows(self, rows: list[Row]) -> tuple[list[Row], int]:
        """``rows`` with their attributes bounded, and the count of records cut."""
        return bound_rows(
            rows,
            max_attrs_bytes=self.max_attrs_bytes,
            max_value_bytes=self.max_value_bytes,
            max_depth=self.max_depth,
        )

    def window(self, rows: list[Row]) -> tuple[list[Row], int]:
        """The rows whose timestamps lie in the window around now, and the count left out."""
        now = time.time_ns()
        return split_window(rows, now - self.late_ns, now + self.ahead_ns)

    def days_ahead(self) -> int:
        """Days of partitions made ahead: enough for every timestamp the window accepts."""
        return max(PARTITION_DAYS_AHEAD, math.ceil(self.ahead_ns / _NS_PER_DAY) + 2)


class _Inflater:
    """gzip inflated a piece at a time, never past ``budget`` bytes (a bomb stops there); each
    piece (at most ``_STEP``) is reported to ``hold`` before the next is inflated."""

    __slots__ = ("_budget", "_d", "_hold", "_out")

    def __init__(self, budget: int, hold: Callable[[int], None] | None = None) -> None:
        self._budget = budget
        self._d = zlib.decompressobj(_GZIP)
        self._out = bytearray()
        self._hold = hold

    def feed(self, data: bytes) -> None:
        while data:
            room = self._budget - len(self._out)
            try:
                # At most room + 1 bytes: one byte more than allowed proves the body too large.
                piece = self._d.decompress(data, min(room + 1, _STEP))
            except zlib.error as exc:
                raise WireError(f"body is not valid gzip: {exc}") from None
            if self._hold is not None:
                self._hold(len(piece))
            self._out += piece
            if len(self._out) > self._budget:
                raise WireError(
                    f"gzip body inflates past this collector's limit of {self._budget} bytes",
                    status=413,
                    bound="max_inflated",
                )
            if self._d.eof:
                # A gzip stream may hold several members back to back.
                data = self._d.unused_data
                if data:
                    self._d = zlib.decompressobj(_GZIP)
            else:
                data = self._d.unconsumed_tail

    def finish(self) -> bytes:
        if not self._d.eof:
            raise WireError("gzip body is truncated")
        return bytes(self._out)


def _too_large(what: str, limit: int, bound: str) -> WireError:
    return WireError(
        f"{what} exceeds this collector's limit of {limit} bytes", status=413, bound=bound
    )


async def read_body(
    request: web.Request, limits: Limits, hold: Callable[[int], None] | None = None
) -> bytes:
    """The request body, inflated if gzip, within ``limits``; refused as soon as it is not.

    A declared or actual size over ``max_body`` is refused before the rest is read; gzip is
    inflated as it arrives and stops at ``max_inflated``. ``hold(n)`` is told of the bytes kept
    (inflated) as they are, and may refuse them by raising. Raises :class:`WireError` (413 too
    large, 400 broken gzip) or 415 for an encoding other than gzip.
    """
    declared = request.content_length
    if declared is not None and declared > limits.max_body:
        raise _too_large(f"body of {declared} bytes", limits.max_body, "max_body")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    stream = request.content
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip"):
        # A server run with aiohttp's own request decompression hands over inflated bytes
        # (it inflates in bounded steps as they are read): count them against max_inflated.
        by_server = getattr(stream, "total_compressed_bytes", None) is not None
        inflater = None if by_server else _Inflater(limits.max_inflated, hold)
    else:
        raise web.HTTPUnsupportedMediaType(
            text=f"unsupported Content-Encoding {encoding!r}: send gzip or identity"
        )
    inflated_by_server = inflater is None and encoding not in ("", "identity")
    parts: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(_CHUNK):
        size += len(chunk)
        if inflated_by_server:
            if getattr(stream, "total_raw_bytes", 0) > limits.max_body:
                raise _too_large("body", limits.max_body, "max_body")
            if size > limits.max_inflated:
                raise _too_large("inflated body", limits.max_inflated, "max_inflated")
        elif size > limits.max_body:
            raise _too_large("body", limits.max_body, "max_body")
        if inflater is None:
            if hold is not None:
                hold(len(chunk))
            parts.append(chunk)
        else:
            inflater.feed(chunk)
    if inflater is not None:
        return inflater.finish()
    return b"".join(parts)


def otlp_batch_id(project: str, path: str, body: bytes) -> uuid.UUID:
    """The batch id of an OTLP request: the same request retried is stored once."""
    digest = hashlib.sha256()
    for part in (project.encode(), path.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(body)
    return uuid.UUID(bytes=digest.digest()[:16])


class Ingestor:
    """The collector's write path: admission, ledger + COPY in one transaction, partitions."""

    def __init__(self, schema: str, limits: Limits, metrics: Metrics) -> None:
        self.schema = schema
        self.limits = limits
        self.metrics = metrics
        self.admission = Admission(limits)
        self.bounds = Bounds(limits)
        self._covered_until_ns = 0
        self._partition_lock: asyncio.Lock | None = None
        self._ledger = (
            f"INSERT INTO {schema}.batches (project, batch_id, records) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING"
        )
        # (project, resource_id) pairs committed: a resource is written once per process, not
        # once per batch. Bounded; forgetting only costs a write that does nothing.
        self._known: set[tuple[str, int]] = set()
        metrics.gauge("inflight_requests", lambda: self.admission.requests)
        metrics.gauge("inflight_records", lambda: self.admission.records)

    async def store(
        self,
        pool: Any,
        project: str,
        batch_id: uuid.UUID,
        rows: list[Row],
        resources: dict[int, bytes] | None = None,
    ) -> bool:
        """Write ``rows`` for ``project`` once, with the ``resources`` they name that are not
        stored yet; False if the batch was stored before.

        Raises :class:`WireError` (400) when PostgreSQL refuses the data itself,
        :class:`Unavailable` when no connection is free within ``pool_wait``, and asyncpg's or
        the OS's error when PostgreSQL cannot take it now (the collector answers 503 to those).
        """
        n = len(rows)
        self.admission.take(n)
        try:
            # Encoded before a connection is taken: the connection is held only for I/O.
            data, columns = _encode(rows, project)
            known = self._known
            docs = resources or {}
            new = {rid: doc for rid, doc in docs.items() if (project, rid) not in known}
            conn = await self._acquire(pool)
            try:
                if self._partitions_due():
                    await self._extend_partitions(conn)
                async with conn.transaction():
                    status = await conn.execute(self._ledger, project, batch_id, n)
                    if status != "INSERT 0 1":
                        return False  # stored before: the empty transaction commits nothing
                    await store_resources(conn, self.schema, project, new)
                    await conn.copy_to_table(
                        "records",
                        schema_name=self.schema,
                        columns=columns,
                        source=data,
                        format="binary",
                    )
                if new:
                    if len(self._known) > _MAX_KNOWN:
                        self._known.clear()
                    self._known.update((project, rid) for rid in new)
                return True
            except Exception as exc:
                if refused_data(exc):  # rolled back; the session is fine
                    raise WireError(f"PostgreSQL refused the records: {exc}") from exc
                # The session is in an unknown state: drop it rather than wait on a reset.
                _drop(conn)
                raise
            except BaseException:
                _drop(conn)
                raise
            finally:
                await pool.release(conn)
        finally:
            self.admission.give(n)

    async def _acquire(self, pool: Any) -> Any:
        try:
            return await pool.acquire(timeout=self.limits.pool_wait)
        except asyncio.TimeoutError as exc:
            raise Unavailable(
                f"no database connection free within {self.limits.pool_wait} s",
                reason="database",
                bound="pool_size",
            ) from exc

    def _partitions_due(self) -> bool:
        # A day's margin beyond the latest timestamp the window accepts.
        return time.time_ns() + self.bounds.ahead_ns >= self._covered_until_ns - _NS_PER_DAY

    async def _extend_partitions(self, conn: Any) -> None:
        if self._partition_lock is None:
            self._partition_lock = asyncio.Lock()
        async with self._partition_lock:
            if not self._partitions_due():
                return  # another request did it while this one waited
            last = await ensure_partitions(conn, self.schema, ahead=self.bounds.days_ahead())
            end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
            self._covered_until_ns = int(end.timestamp()) * 1_000_000_000


_MAX_KNOWN = 100_000


def _encode(rows: list[Row], project: str) -> tuple[memoryview, tuple[str, ...]]:
    """The rows as one binary COPY stream, ``project`` appended to each, and its columns:
    encoded in one call (compiled), sent as one buffer, with no per-value codec call on the
    way; the optional columns only when the batch has values in them."""
    columns, keep = copy_columns(rows)
    try:
        body = encode_rows(rows, extra=(project,), keep=keep)
    except (TypeError, ValueError, OverflowError) as exc:
        # The decoders hand over valid rows only; were one not, nothing of the batch is written.
        raise WireError(f"records cannot be stored: {exc}") from None
    # A memoryview: asyncpg would take bytes for a file name.
    return memoryview(b"".join((HEADER, body, TRAILER))), (*columns, "project")


def _drop(conn: Any) -> None:
    try:
        conn.terminate()
    except Exception:
        pass  # a lost connection was already handed back to the pool by asyncpg


INGEST: web.AppKey[Ingestor] = web.AppKey("atrace_ingestor", Ingestor)


async def _admitted(
    request: web.Request, decode: Callable[[bytes], Decoded], endpoint: str
) -> tuple[Decoded, bool]:
    """Read, decode, bound and store one request; what was decoded, and whether it was stored
    (its ``rows`` are then the rows stored)."""
    ingestor = request.app[INGEST]
    limits = ingestor.limits
    ingestor.admission.enter()
    held = ingestor.admission.held()  # the body's bytes, inflated, bounded in all requests
    try:
        try:
            body = await asyncio.wait_for(
                read_body(request, limits, held.grow), limits.body_timeout
            )
        except asyncio.TimeoutError:
            raise web.HTTPRequestTimeout(
                text=f"body not received within {limits.body_timeout} s"
            ) from None
        decoded = decode(body)
        del body
        decoded.rows, decoded.rejected = ingestor.bounds.window(decoded.rows)
        rows = decoded.rows
        if not rows:
            return decoded, False
        project = request[PROJECT]
        with database():
            stored = await ingestor.store(
                request.app[POOL], project, decoded.batch_id, rows, decoded.resources
            )
    finally:
        held.release()
        ingestor.admission.leave()
    if stored:
        ingestor.metrics.records(endpoint, len(rows))
        try:
            request.app[TAIL].publish(project, rows)
        except Exception:
            # The rows are committed: the client must hear so, whatever the live tail did.
            _log.exception("atrace collector: the live tail failed to take committed rows")
    else:
        ingestor.metrics.duplicate(endpoint)
    return decoded, stored


async def _ingest(request: web.Request) -> web.Response:
    """``POST /v1/ingest``: one atrace batch (msgpack or JSON); 200 ``{"accepted": n, ...}``."""
    from .._formats.wire import decode_batch_counted

    content_type = request.headers.get("Content-Type", "").strip() or _DEFAULT_NATIVE
    if content_type.split(";", 1)[0].strip().lower() == "application/octet-stream":
        content_type = _DEFAULT_NATIVE
    ingestor = request.app[INGEST]
    bounds = ingestor.bounds

    def decode(body: bytes) -> Decoded:
        resources: dict[int, bytes] = {}
        batch_id, rows, truncated = decode_batch_counted(
            body,
            content_type,
            max_records=ingestor.limits.max_records,
            max_attrs_bytes=bounds.max_attrs_bytes,
            max_value_bytes=bounds.max_value_bytes,
            max_depth=bounds.max_depth,
            resources=resources,
        )
        return Decoded(batch_id, rows, truncated, resources=resources)

    decoded, stored = await _admitted(request, decode, "ingest")
    n = len(decoded.rows)
    answer: dict[str, Any] = {"accepted": n, "duplicate": bool(n) and not stored}
    if decoded.rejected:
        answer["rejected"] = {"timestamp": decoded.rejected}
    if decoded.truncated:
        answer["truncated"] = {"attrs": decoded.truncated}
    return web.json_response(answer)


def _otlp_answer(kind: str, fmt: str, decoded: Decoded) -> bytes:
    """The OTLP response: empty on full success, else ``partial_success`` saying what was cut."""
    if not decoded.rejected and not decoded.truncated:
        return _OTLP_OK[fmt]
    parts = []
    if decoded.rejected:
        parts.append(
            f"{decoded.rejected} records rejected: timestamp outside this collector's window"
        )
    if decoded.truncated:
        parts.append(
            f"{decoded.truncated} records had their attributes cut to this collector's bounds"
        )
    message = "; ".join(parts)
    if kind == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTracePartialSuccess,
            ExportTraceServiceResponse,
        )

        traces = ExportTraceServiceResponse(
            partial_success=ExportTracePartialSuccess(
                rejected_spans=decoded.rejected, error_message=message
            )
        )
        if fmt == "protobuf":
            return bytes(traces.SerializeToString())
        field = "rejectedSpans"
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsPartialSuccess,
            ExportLogsServiceResponse,
        )

        logs = ExportLogsServiceResponse(
            partial_success=ExportLogsPartialSuccess(
                rejected_log_records=decoded.rejected, error_message=message
            )
        )
        if fmt == "protobuf":
            return bytes(logs.SerializeToString())
        field = "rejectedLogRecords"
    # OTLP/JSON: 64-bit integers as decimal strings.
    return orjson.dumps({"partialSuccess": {field: str(decoded.rejected), "errorMessage": message}})


def _otlp_handler(kind: str) -> Callable[[web.Request], Any]:
    endpoint = f"otlp_{kind}"

    async def handle(request: web.Request) -> web.Response:
        from .._formats import otlp

        decoder = otlp.decode_traces if kind == "traces" else otlp.decode_logs
        media = request.content_type.lower()
        fmt = _OTLP_TYPES.get(media)
        if fmt is None:
            raise web.HTTPUnsupportedMediaType(
                text=f"unsupported content type {media!r}: send application/x-protobuf or "
                "application/json"
            )
        ingestor = request.app[INGEST]
        project = request[PROJECT]

        def decode(body: bytes) -> Decoded:
            resources: dict[int, bytes] = {}
            rows = decoder(
                body, media, max_records=ingestor.limits.max_records, resources=resources
            )
            rows, truncated = ingestor.bounds.rows(rows)
            batch_id = otlp_batch_id(project, request.path, body)
            return Decoded(batch_id, rows, truncated, resources=resources)

        decoded, _ = await _admitted(request, decode, endpoint)
        return web.Response(body=_otlp_answer(kind, fmt, decoded), content_type=media)

    handle.__name__ = f"otlp_{kind}"
    handle.__doc__ = f"``POST /v1/{kind}``: an OTLP/HTTP export (protobuf or JSON)."
    return handle


def add_ingest_routes(app: web.Application, limits: Limits, metrics: Metrics, schema: str) -> None:
    """Register the three ingest endpoints and the :class:`Ingestor` they share."""
    app[INGEST] = Ingestor(schema, limits, metrics)
    app.router.add_post("/v1/ingest", _ingest)
    app.router.add_post("/v1/traces", _otlp_handler("traces"))
    app.router.add_post("/v1/logs", _otlp_handler("logs"))
