"""Records to rows in pure Python: the twin of the compiled ``_encode``, with the same rows.

``encoder`` is an :class:`~atrace._pipeline.encode.Encoder`: its settings, its location cache and
its slow paths (``text``, ``attrs_json``, ``location_text``, ``broken_row``) serve both
implementations, so that they differ only in speed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .sanitize import error_fields

__all__ = ("encode_rows",)


def encode_rows(encoder: Any, records: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Rows for a batch; a record that cannot be encoded at all becomes an error row."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    for rec in records:
        try:
            append(_row(encoder, rec))
        except Exception as exc:
            append(encoder.broken_row(rec, exc))
    return out


def _row(encoder: Any, rec: Any) -> tuple[Any, ...]:
    # One record as a row in COLUMNS order (ts stays integer nanoseconds). A record is an ended
    # Span (its ``_record()`` gives the tuple) or a tuple built on the emit path: ``(kind, ts_ns,
    # level, trace_id, span_id, parent_id, duration_ns, status, service or None, name, message,
    # attrs or None, error, location)``, a span's followed by ``(span_kind, trace_state,
    # trace_flags, status_message, links)``. ``error`` is what the caller had at hand (an exception,
    # a stack summary, or strings; see ``error_fields``); ``location`` is ``"file:line"`` or a
    # ``(file, line)`` pair.
    if type(rec) is not tuple:
        rec = rec._record()  # an ended Span is its own record
    links = None
    if len(rec) == 14:  # a log
        span_kind = state = flags = status_msg = None
    else:
        span_kind, state, flags, status_msg, links = rec[14:]
        rec = rec[:14]
        if status_msg is not None:
            status_msg = encoder.text(status_msg, encoder.max_message_length)
        if links is not None:
            links = encoder.links_json(links)
    (
        kind,
        ts,
        level,
        trace_id,
        span_id,
        parent_id,
        dur,
        status,
        service,
        name,
        msg,
        attrs,
        err,
        loc,
    ) = rec
    limit = encoder.max_message_length
    text = encoder.text
    g = encoder.global_attrs
    if g is not None:
        attrs = {**g, **attrs} if attrs else g
    doc = None
    if attrs and len(attrs) > encoder.max_attributes:
        attrs, doc = encoder.cut_attrs(attrs)
    if err is None:
        etype = emsg = estack = None
    else:
        etype, emsg, estack = error_fields(err)
        if etype is not None:
            etype = text(etype, limit)
        if emsg is not None:
            emsg = text(emsg, limit)
        if estack is not None:
            estack = text(estack, limit * 4)
    if loc is not None:
        cached = encoder.locations.get(loc)
        loc = encoder.location_text(loc) if cached is None else cached
    return (
        ts,
        kind,
        level,
        trace_id,
        span_id,
        parent_id,
        dur,
        status,
        encoder.service if service is None else text(service, 256),
        encoder.environment,
        encoder.host,
        encoder.pid,
        None if name is None else text(name, 1024),
        None if msg is None else text(msg, limit),
        None if not attrs else encoder.attrs_json(attrs),
        etype,
        emsg,
        estack,
        loc,
        span_kind,
        state,
        flags,
        status_msg,
        links,
        doc,
        encoder.resource_id,
    )
