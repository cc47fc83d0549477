# cython: language_level=3, boundscheck=False, wraparound=False
"""Records to rows, compiled: the encoder's common case (the twin is ``_encode_py``).

Every value that is not plain (non-ASCII text, NUL, oversize, odd attributes, errors) goes to the
same Python code the twin uses (the encoder's slow paths and ``sanitize``), so both give
identical rows.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    Py_ssize_t PyUnicode_FindChar(object, Py_UCS4, Py_ssize_t, Py_ssize_t, int) except -2
    void PyObject_GC_UnTrack(object)

import orjson

from .sanitize import error_fields, json_default

__all__ = ("encode_rows",)

cdef object _dumps = orjson.dumps
cdef object _OPTS = orjson.OPT_NON_STR_KEYS
cdef bytes _NUL_ESCAPE = b"\\u0000"


cdef inline bint _plain(object s, Py_ssize_t limit):
    # Exactly str, ASCII, within the limit and free of NUL: PostgreSQL takes it as it is.
    cdef Py_ssize_t n
    if type(s) is not str or not PyUnicode_IS_ASCII(s):
        return False
    n = PyUnicode_GET_LENGTH(s)
    return n <= limit and PyUnicode_FindChar(s, 0, 0, n, 1) == -1


def encode_rows(encoder, records):
    """Rows for a batch; a record that cannot be encoded at all becomes an error row."""
    cdef list out = []
    cdef Py_ssize_t limit = encoder.max_message_length
    cdef Py_ssize_t vlimit = encoder.max_value_length
    cdef dict locations = encoder.locations
    default_service = encoder.service
    environment = encoder.environment
    host = encoder.host
    pid = encoder.pid
    g = encoder.global_attrs
    resource_id = encoder.resource_id
    cdef Py_ssize_t max_attrs = encoder.max_attributes
    cut_attrs = encoder.cut_attrs
    text = encoder.text
    attrs_json = encoder.attrs_json
    location_text = encoder.location_text
    broken = encoder.broken_row
    for rec in records:
        try:
            if type(rec) is not tuple:
                rec = rec._record()  # an ended Span is its own record
            if len(<tuple>rec) == 14:  # a log
                (kind, ts, level, trace_id, span_id, parent_id, dur, status, service, name, msg,
                 attrs, err, loc) = rec
                span_kind = state = flags = status_msg = links = None
            else:  # a span: its context, status description and links follow
                (kind, ts, level, trace_id, span_id, parent_id, dur, status, service, name, msg,
                 attrs, err, loc, span_kind, state, flags, status_msg, links) = rec
                if status_msg is not None and not _plain(status_msg, limit):
                    status_msg = text(status_msg, limit)
                if links is not None:
                    links = encoder.links_json(links)
            if g is not None:
                attrs = {**g, **attrs} if attrs else g
            doc = None
            if attrs and len(attrs) > max_attrs:
                attrs, doc = cut_attrs(attrs)
            if attrs:
                try:
                    js = _dumps(attrs, json_default, _OPTS)
                except Exception:
                    js = None
                if js is None or _NUL_ESCAPE in js or len(<bytes>js) > vlimit:
                    js = attrs_json(attrs)
                else:
                    # orjson hands back a buffer sized for growth; a batch keeps thousands alive,
                    # and an exact-size copy is much cheaper than holding (and faulting) those.
                    js = PyBytes_FromStringAndSize(PyBytes_AS_STRING(js), PyBytes_GET_SIZE(js))
            else:
                js = None
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
                cached = locations.get(loc)
                loc = location_text(loc) if cached is None else cached
            if service is None:
                service = default_service
            elif not _plain(service, 256):
                service = text(service, 256)
            if name is not None and not _plain(name, 1024):
                name = text(name, 1024)
            if msg is not None and not _plain(msg, limit):
                msg = text(msg, limit)
            row = (ts, kind, level, trace_id, span_id, parent_id, dur, status, service,
                   environment, host, pid, name, msg, js, etype, emsg, estack, loc, span_kind,
                   state, flags, status_msg, links, doc, resource_id)
            # A row holds only str, int, bytes and None: it can never be part of a cycle, so
            # the collector need not walk the thousands a batch keeps alive.
            PyObject_GC_UnTrack(row)
            out.append(row)
        except Exception as exc:
            out.append(broken(rec, exc))
    # Rows never point back at the list: out of the collector's walks, like each row.
    PyObject_GC_UnTrack(out)
    return out
