"""OTLP/HTTP sink: batches as OTLP traces and logs, posted to any OpenTelemetry endpoint.

Settings not given to the constructor come from the standard ``OTEL_EXPORTER_OTLP_*``
variables (the per-signal ``OTEL_EXPORTER_OTLP_TRACES_*`` / ``_LOGS_*`` ones first); an empty
value counts as unset. Timeouts in those variables are milliseconds, as the OpenTelemetry
specification says; the constructor's ``timeout`` is seconds, as everywhere else in atrace.

Only 429, 502, 503 and 504 answers, connection failures and time-outs are retried (after the
server's ``Retry-After`` when it sends one); every other status is permanent, as the OTLP
specification requires. A partial success is counted and logged, never retried. Failures raise
:class:`~atrace.errors.SinkHTTPError`, also known here as :data:`OtlpExportError`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from .._delivery.classify import Verdict, classify
from .._records import Batch
from ..config import env
from ..errors import ConfigError, SinkClosedError, SinkHTTPError, redact
from ._base import off_loop
from ._http import gzip_body, open_session, post

__all__ = ("OtlpExportError", "OtlpSink", "classify", "parse_headers")

_log = logging.getLogger("atrace.sinks.otlp")

DEFAULT_ENDPOINT = "http://localhost:4318"
DEFAULT_TIMEOUT = 10.0  # seconds; the specification's default of 10000 ms
PROTOCOLS = ("http/protobuf", "http/json")
COMPRESSIONS = ("gzip", "none")
# The OTLP specification's retryable statuses; all others MUST NOT be retried (408 included,
# which the HTTP sink retries: see sinks.http.RETRYABLE_STATUSES).
RETRYABLE_STATUSES = frozenset((429, 502, 503, 504))
_SIGNALS = {"traces": "v1/traces", "logs": "v1/logs"}
_CONTENT_TYPES = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}
# Encoding runs at roughly 15-30 µs a row here (protobuf faster than JSON), gzip adds a little.
# Up to 500 rows is then well under 20 ms on the event loop, shorter than one tick of a busy
# server's own work; larger batches (the default batch is 5000 rows, 100+ ms) go to a worker
# thread, where the interpreter's switch interval keeps handing the loop its turn.
OFF_LOOP_ROWS = 500
# Remembers which signals of a batch were already accepted, so that a retry of a batch whose
# traces went through but whose logs did not sends only the logs. Bounded: ids of batches that
# were given up on are forgotten, oldest first.
_MAX_PROGRESS = 256


# What a request the endpoint refused, or that got no answer in time, raises: the one class
# :class:`~atrace.errors.SinkHTTPError` (its ``status``, ``retryable`` and ``retry_after`` are
# what :func:`classify` reports), under the name this module has always given it.
OtlpExportError = SinkHTTPError


def parse_headers(raw: str, field: str = "headers") -> dict[str, str]:
    """``k=v,k2=v2`` as the ``OTEL_EXPORTER_OTLP_HEADERS`` variables write them.

    Keys are lower-cased (HTTP header names are case-insensitive); values are URL-decoded.
    """
    out: dict[str, str] = {}
    for n, item in enumerate(raw.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Neither the value nor the bad item: a header value is often a token.
            raise ConfigError(field, "***", f"header {n} has no '=': expected key=value")
        out[key.strip().lower()] = unquote(value.strip())
    return out


def _signal_env(signal: str, setting: str) -> tuple[str, str] | None:
    """The per-signal variable if set, else the general one: ``(name, value)``."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"):
        value = env(name)
        if value is not None:
            return name, value
    return None


def _check_url(field: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(field, url, "expected an http:// or https:// URL")
    return url


def _signal_url(base: str, signal: str) -> str:
    # The specification's rule: the signal path is appended to the base URL's own path.
    return f"{base.rstrip('/')}/{_SIGNALS[signal]}"


class _Target:
    """Where and how one signal is sent."""

    __slots__ = ("compression", "content_type", "headers", "protocol", "timeout", "url")

    def __init__(
        self,
        url: str,
        protocol: str,
        compression: str,
        timeout: float,
        headers: dict[str, str],
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.content_type = _CONTENT_TYPES[protocol]
        self.compression = compression
        self.timeout = timeout
        self.headers = headers


def _resolve_target(
    signal: str,
    *,
    endpoint: str | None,
    signal_endpoint: str | None,
    protocol: str | None,
    headers: Mapping[str, str] | None,
    compression: str | None,
    timeout: float | None,
) -> _Target:
    if signal_endpoint is not None:
        url = _check_url(f"{signal}_endpoint", signal_endpoint)
    elif endpoint is not None:
        url = _signal_url(_check_url("endpoint", endpoint), signal)
    else:
        own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        given = env(own)
        if given is not None:
            url = _check_url(own, given)  # used as given, path and all
        else:
            base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
            field = "OTEL_EXPORTER_OTLP_ENDPOINT"
            url = _signal_url(_check_url(field, base) if base else DEFAULT_ENDPOINT, signal)

    field, chosen = "protocol", protocol
    if chosen is None:
        found = _signal_env(signal, "PROTOCOL")
        field, chosen = found if found else ("protocol", "http/protobuf")
    chosen = chosen.strip().lower()
    if chosen not in PROTOCOLS:
        raise ConfigError(
            field, chosen, "atrace sends OTLP over HTTP: 'http/protobuf' or 'http/json'"
        )

    field, packing = "compression", compression
    if packing is None:
        found = _signal_env(signal, "COMPRESSION")
        field, packing = found if found else ("compression", "none")
    packing = packing.strip().lower()
    if packing not in COMPRESSIONS:
        raise ConfigError(field, packing, "expected 'gzip' or 'none'")

    if timeout is None:
        found = _signal_env(signal, "TIMEOUT")
        if found is None:
            seconds = DEFAULT_TIMEOUT
        else:
            try:
                seconds = float(found[1]) / 1000.0  # milliseconds, per the specification
            except ValueError:
                raise ConfigError(found[0], found[1], "expected milliseconds") from None
            if not seconds > 0:
                raise ConfigError(found[0], found[1], "expected milliseconds > 0")
    else:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError("timeout", timeout, "expected seconds > 0")
        seconds = float(timeout)

    merged: dict[str, str] = {}
    found = _signal_env(signal, "HEADERS")
    if found is not None:
        merged.update(parse_headers(found[1], found[0]))
    if headers:
        merged.update({str(k).lower(): str(v) for k, v in headers.items()})
    return _Target(url, chosen, packing, seconds, merged)


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def _encode(protocol: str, compression: str, signal: str, rows: list[Any]) -> bytes:
    from .._formats import otlp
    from .._formats.resources import known_all

    resources = known_all()  # this process's resource, when it has more than its columns
    if protocol == "http/json":
        if signal == "traces":
            body = otlp.traces_json(rows, resources)
        else:
            body = otlp.logs_json(rows, resources)
    else:
        if signal == "traces":
            request = otlp.traces_request(rows, resources)
        else:
            request = otlp.logs_request(rows, resources)
        body = request.SerializeToString()
    if compression == "gzip":
        body = gzip_body(body)
    return body


def _rejected(signal: str, content_type: str, body: bytes) -> tuple[int, str] | None:
    """``(rejected, message)`` from a success answer's populated ``partial_success``."""
    if not body:
        return None
    key = "rejectedSpans" if signal == "traces" else "rejectedLogRecords"
    if "json" in content_type:
        try:
            document = orjson.loads(body)
            partial = document.get("partialSuccess") if isinstance(document, dict) else None
            if not isinstance(partial, dict):
                return None
            count = int(partial.get(key) or 0)
            message = str(partial.get("errorMessage") or "")
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
    else:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        answer: Any = (
            ExportTraceServiceResponse() if signal == "traces" else ExportLogsServiceResponse()
        )
        try:
            answer.ParseFromString(body)
        except (DecodeError, ValueError):
            return None
        if not answer.HasField("partial_success"):
            return None
        partial = answer.partial_success
        count = partial.rejected_spans if signal == "traces" else partial.rejected_log_records
        message = partial.error_message
    if count <= 0 and not message:
        return None
    return count, message


class OtlpSink:
    """Sends batches to an OTLP/HTTP endpoint: spans to ``/v1/traces``, logs to ``/v1/logs``.

    ``endpoint`` is a base URL (the signal path is appended); ``traces_endpoint`` and
    ``logs_endpoint`` are used as given. ``protocol`` is ``"http/protobuf"`` (default) or
    ``"http/json"``; ``compression`` ``"gzip"`` or ``"none"``; ``timeout`` is seconds per
    request; ``headers`` are added to every request. Unset values come from the
    ``OTEL_EXPORTER_OTLP_*`` environment variables, then the defaults
    (``http://localhost:4318``, protobuf, no compression, 10 s).

    Span start rows (kind 1) have no OTLP form: they are counted in ``skipped``.
    ``rejected_spans`` and ``rejected_logs`` count what endpoints reported as rejected in a
    partial success.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        traces_endpoint: str | None = None,
        logs_endpoint: str | None = None,
        protocol: str | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        timeout: float | None = None,
    ) -> None:
        common: dict[str, Any] = {
            "endpoint": endpoint,
            "protocol": protocol,
            "headers": headers,
            "compression": compression,
            "timeout": timeout,
        }
        self.targets = {
            "traces": _resolve_target("traces", signal_endpoint=traces_endpoint, **common),
            "logs": _resolve_target("logs", signal_endpoint=logs_endpoint, **common),
        }
        self.name = f"otlp:{_host_port(self.targets['traces'].url)}"
        urls = f"{self.targets['traces'].url}|{self.targets['logs'].url}"
        # Names this destination's spill directory, the same in every process sending here.
        self.spill_key = f"otlp-{hashlib.sha256(urls.encode()).hexdigest()[:12]}"
        self.skipped = 0
        self.spans_sent = 0
        self.logs_sent = 0
        self.rejected_spans = 0
        self.rejected_logs = 0
        self._session: Any = None
        self._progress: collections.OrderedDict[Any, set[str]] = collections.OrderedDict()

    def __repr__(self) -> str:
        t, lg = self.targets["traces"], self.targets["logs"]
        return (
            f"OtlpSink(traces={redact(t.url)!r}, logs={redact(lg.url)!r}, protocol={t.protocol!r})"
        )

    @property
    def traces_url(self) -> str:
        """Where spans are posted."""
        return self.targets["traces"].url

    @property
    def logs_url(self) -> str:
        """Where log records are posted."""
        return self.targets["logs"].url

    def classify(self, exc: BaseException) -> Verdict:
        """Retry 429/502/503/504, lost connections and time-outs; nothing else."""
        return classify(exc)

    async def open(self) -> None:
        """Open one keep-alive HTTP session for both signals."""
        if self._session is not None:
            return
        # The protobuf classes: a missing extra shows at open, not at the first batch.
        from .._formats import otlp  # noqa: F401

        # Signals are posted one after the other; their endpoints may be two different hosts.
        self._session = open_session("otlp", headers={}, connections=2)

    async def close(self) -> None:
        """Close the HTTP session; ``open`` may be called again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def write(self, batch: Batch) -> None:
        """Post the batch's spans and its logs (two requests when it holds both)."""
        session = self._session
        if session is None:
            raise SinkClosedError("the sink is not open", sink=self.name, batch_size=len(batch))
        from .._formats import otlp

        parts = otlp.partition(batch.rows)
        done = self._progress.get(batch.id)
        if done is None:
            # First sight of this batch: count its start rows once, not on every retry.
            self.skipped += parts.skipped
            done = self._progress[batch.id] = set()
            while len(self._progress) > _MAX_PROGRESS:
                self._progress.popitem(last=False)
        for signal, rows in (("traces", parts.spans), ("logs", parts.logs)):
            if not rows or signal in done:
                continue
            await self._post(session, self.targets[signal], signal, rows, len(batch))
            done.add(signal)
            if signal == "traces":
                self.spans_sent += len(rows)
            else:
                self.logs_sent += len(rows)
        self._progress.pop(batch.id, None)

    async def _post(
        self, session: Any, target: _Target, signal: str, rows: list[Any], batch_size: int
    ) -> None:
        body = await off_loop(
            _encode,
            target.protocol,
            target.compression,
            signal,
            rows,
            offload=len(rows) > OFF_LOOP_ROWS,
        )
        headers = {"Content-Type": target.content_type, **target.headers}
        if target.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        answer = await post(
            session,
            target.url,
            body,
            headers=headers,
            timeout=target.timeout,
            sink=self.name,
            batch_size=batch_size,
            retryable_statuses=RETRYABLE_STATUSES,
            # As OpenTelemetry's own exporters do: an endpoint behind a proxy may redirect.
            follow_redirects=True,
        )
        partial = _rejected(signal, answer.content_type, answer.body)
        if partial is not None:
            count, message = partial
            if signal == "traces":
                self.rejected_spans += count
            else:
                self.rejected_logs += count
            _log.warning(
                "atrace: %s rejected %d %s of a batch: %s",
                redact(target.url),
                count,
                "spans" if signal == "traces" else "log records",
                redact(message) if message else "(no message)",
            )
