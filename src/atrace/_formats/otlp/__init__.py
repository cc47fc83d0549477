"""OTLP both ways: atrace rows as OTLP requests (protobuf and JSON), OTLP requests as atrace rows.

Encoding follows the OTLP data model: a complete span (kind 3) or the end row of an announced
span (kind 2) is one ``Span``; a log (kind 0) is one ``LogRecord``; a start row (kind 1) has no
OTLP form and is left out (:func:`partition` counts it). Rows are grouped per resource
(``service.name``, ``deployment.environment.name``, ``host.name``, ``process.pid``) under the
instrumentation scope ``atrace``.

Decoding is what the collector runs for ``POST /v1/traces`` and ``/v1/logs``: a body is turned
into rows whole or refused whole with a :class:`~atrace.errors.WireError` naming what is wrong.
It walks the protobuf objects with plain loops; every text goes through ``sanitize_text``.

Choices where OTLP and atrace differ:

* A span's kind, W3C ``trace_state`` and flags (the low 8 bits of OTLP's ``flags``) and its
  status message have columns of their own (``span_kind``, ``trace_state``, ``trace_flags``,
  ``status_message``); rows stored before them kept a non-internal kind in ``attrs`` as
  ``span.kind``, which encoding still reads. A status is unset unless it was set; an error
  status's message is the span's ``status_message``, else its exception as OpenTelemetry's SDKs
  describe one (``"ValueError: bad"``).
* An ``exception`` event on a span whose status is ERROR is the span's own failure: it fills the
  span row's error columns (as atrace records a failed span) instead of becoming a log row; its
  time (unless it is the span's end) and its other attributes go to the span's ``otlp``
  document. Any other event becomes a log row linked to the span, marked ``"event": true`` in
  its ``otlp`` document; an ``exception`` event then has level 40. Encoding puts those rows
  back on their span as events (when the span is in the same request) and writes an
  ``exception`` event only for a span with an exception (an error type or a stack), never for
  an error status alone.
* A span's links have a column of their own (``links``: ids in hex, trace state, flags,
  attributes). OTLP's span flags above the W3C byte (whether the parent is remote) go to the
  ``otlp`` document as ``flags``.
* A log's severity number and text, its observed time, a body that is not a string and its
  event name go to the ``otlp`` document, each only when it differs from what atrace would
  send for the row (the level's number and logging's name for it, the observed time equal to
  the time); a body's JSON text is the message, so it is searched and shown as any message.
* Values JSON cannot hold keep their type: bytes are stored as base64 text and non-finite
  doubles as ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, each named in the row's ``otlp``
  document under ``types`` by a JSON pointer into the row (``{"/attrs/blob": "bytes",
  "/links/0/attrs/x": "double"}``), so that they go out as bytes and doubles again.
* A log's ``name`` (its logger) travels as the ``logger.name`` attribute; logs without it take
  the instrumentation scope's name, which is what OpenTelemetry's logging bridges put there.
* ``location`` travels as ``code.filepath`` / ``code.lineno``; decoding also reads the newer
  ``code.file.path`` / ``code.line.number``.
"""

from __future__ import annotations

from ..._records import Row
from ...errors import WireError
from .common import SCOPE_NAME, level_from_severity, severity_number
from .encode import Partition, logs_request, partition, traces_request
from .json_decode import decode_logs_json, decode_traces_json
from .json_encode import logs_json, traces_json
from .pb import IMPLEMENTATION, decode_logs_pb, decode_traces_pb

__all__ = (
    "IMPLEMENTATION",
    "SCOPE_NAME",
    "Partition",
    "decode_logs",
    "decode_traces",
    "level_from_severity",
    "logs_json",
    "logs_request",
    "partition",
    "severity_number",
    "traces_json",
    "traces_request",
)

# The parts live in private modules; they present themselves as this module's, which is where
# they are imported from (reprs, pickles and documentation name atrace._formats.otlp).
for _value in (
    Partition,
    level_from_severity,
    logs_json,
    logs_request,
    partition,
    severity_number,
    traces_json,
    traces_request,
):
    _value.__module__ = __name__
del _value


def _format(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf"):
        return "protobuf"
    if media == "application/json":
        return "json"
    raise WireError(
        f"unsupported content type {content_type!r}: expected application/x-protobuf "
        "or application/json",
        status=415,
    )


def decode_traces(
    body: bytes,
    content_type: str,
    *,
    max_records: int = 100_000,
    resources: dict[int, bytes] | None = None,
) -> list[Row]:
    """Rows for an OTLP ``ExportTraceServiceRequest`` (protobuf or JSON, already decompressed).

    Each span is a kind 3 row; its events are log rows linked to it. Each row names its
    resource and instrumentation scope by ``resource_id``; the document of each goes into
    ``resources`` when given (id → JSON bytes; see ``rows.origin``). Raises
    :class:`~atrace.errors.WireError` for anything malformed (400), more than ``max_records``
    spans and events (413), or another content type (415); never returns part of a body.
    """
    if _format(content_type) == "json":
        return decode_traces_json(body, max_records, resources)
    return decode_traces_pb(body, max_records, resources)


def decode_logs(
    body: bytes,
    content_type: str,
    *,
    max_records: int = 100_000,
    resources: dict[int, bytes] | None = None,
) -> list[Row]:
    """Rows for an OTLP ``ExportLogsServiceRequest`` (protobuf or JSON, already decompressed).

    Each log record is a kind 0 row. Errors and ``resources`` as for :func:`decode_traces`.
    """
    if _format(content_type) == "json":
        return decode_logs_json(body, max_records, resources)
    return decode_logs_pb(body, max_records, resources)
