# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The emit hot path compiled: ids, Span, span() and the level functions (twin: _emit_py)."""

from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set, get_value
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.set cimport PySet_Add, PySet_Discard
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int64_t, uint64_t

import os

from .slow import build, catch, format_message, misused, snapshot, span_kind, span_links
from .runtime import current, runtime

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>

    static inline int64_t atrace_now_ns(void) {
        struct timespec ts;
        timespec_get(&ts, TIME_UTC);
        return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
    }

    /* xoshiro256** (Blackman and Vigna): fast, 256-bit state, seeded from os.urandom. */
    static uint64_t atrace_rng[4];
    static inline uint64_t atrace_rotl(const uint64_t x, int k) {
        return (x << k) | (x >> (64 - k));
    }
    static inline uint64_t atrace_next(void) {
        uint64_t *s = atrace_rng;
        const uint64_t result = atrace_rotl(s[1] * 5, 7) * 9;
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
        s[2] ^= t;
        s[3] = atrace_rotl(s[3], 45);
        return result;
    }
    """
    int64_t atrace_now_ns() nogil
    uint64_t atrace_next() nogil
    uint64_t atrace_rng[4]

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object)
    void PyObject_GC_Track(object)
    bint PyObject_GC_IsTracked(object)
    ctypedef struct PyFrameObject
    PyFrameObject* PyEval_GetFrame()
    int PyFrame_GetLineNumber(PyFrameObject*)

cdef extern from *:
    """
    /* PyFrame_GetCode returns PyCodeObject*; one generic object pointer keeps compilers quiet. */
    static inline PyObject *atrace_frame_code(PyFrameObject *frame) {
        return (PyObject *)PyFrame_GetCode(frame);
    }
    """
    object atrace_frame_code(PyFrameObject*)

cdef extern from *:
    """
    /* The call sites seen last, direct-mapped by (code object, instruction offset): a hit gives
       the site's "file:line" and module name without hashing the code object (its hash is
       computed from its contents, every time) or decoding its line table. Each entry holds
       strong references, so a cached code object cannot be freed and its address reused. */
    #define SITE_SLOTS 512
    typedef struct {
        PyObject *code;
        int lasti;
        PyObject *location;
        PyObject *module;
    } atrace_site;
    static atrace_site atrace_sites[SITE_SLOTS];

    static inline int atrace_lasti(PyFrameObject *frame) {
    #if PY_VERSION_HEX >= 0x030B0000
        return PyFrame_GetLasti(frame);
    #else
        return frame->f_lasti;
    #endif
    }

    /* The entry for this frame's site, and the site's code object (borrowed) and offset. */
    static inline atrace_site *atrace_site_slot(PyFrameObject *frame, PyObject **code,
                                                int *lasti) {
        PyObject *c = (PyObject *)PyFrame_GetCode(frame);
        Py_DECREF(c);  /* the frame keeps it alive */
        int i = atrace_lasti(frame);
        size_t h = (((size_t)c >> 4) ^ ((size_t)(unsigned)i * 2654435761u)) & (SITE_SLOTS - 1);
        *code = c;
        *lasti = i;
        return &atrace_sites[h];
    }

    static inline int atrace_site_hit(atrace_site *site, PyObject *code, int lasti) {
        return site->code == code && site->lasti == lasti;
    }

    static inline void atrace_site_fill(atrace_site *site, PyObject *code, int lasti,
                                        PyObject *location, PyObject *module) {
        PyObject *old_code = site->code, *old_loc = site->location, *old_mod = site->module;
        Py_INCREF(code);
        Py_INCREF(location);
        Py_INCREF(module);
        site->code = code;
        site->lasti = lasti;
        site->location = location;
        site->module = module;
        Py_XDECREF(old_code);
        Py_XDECREF(old_loc);
        Py_XDECREF(old_mod);
    }
    """
    ctypedef struct atrace_site:
        PyObject* location
        PyObject* module
    atrace_site* atrace_site_slot(PyFrameObject*, PyObject**, int*)
    bint atrace_site_hit(atrace_site*, PyObject*, int)
    void atrace_site_fill(atrace_site*, PyObject*, int, PyObject*, PyObject*)

__all__ = (
    "Span",
    "SpanContext",
    "begin",
    "critical",
    "debug",
    "end",
    "error",
    "exception",
    "info",
    "new_span_id",
    "new_trace_id",
    "parent_of",
    "reseed",
    "set_parent",
    "span",
    "start_record",
    "warning",
)

cdef object _current = current
cdef object _runtime = runtime
cdef object _build = build
cdef object _catch = catch


cdef inline bint _atomic(object value):
    # Values a record keeps as they are (immutable, and the common case): anything else is
    # copied as of the call (_frozen).
    cdef type tp = type(value)
    return (tp is str or tp is int or tp is float or tp is bool or value is None
            or tp is bytes)


cdef object _snapshot = snapshot


cdef object _copy(object value):
    # The value as it is now. The common shapes (a list, dict or set of plain values, a
    # bytearray) are copied here; anything nested, and subclasses, go to snapshot(), which copies
    # all the way down and keeps a cycle a cycle. A flat copy is referred to by the record alone
    # and holds no container, so it cannot be part of a cycle: it is kept out of the garbage
    # collector's lists, as the record is.
    cdef type tp = type(value)
    cdef list items
    cdef dict mapping
    if tp is list:
        for item in <list>value:
            if not _atomic(item):
                return _snapshot(value, {})
        items = list(<list>value)
        PyObject_GC_UnTrack(items)
        return items
    if tp is dict:
        for item in (<dict>value).values():
            if not _atomic(item):
                return _snapshot(value, {})
        mapping = (<dict>value).copy()
        if PyObject_GC_IsTracked(mapping):
            PyObject_GC_UnTrack(mapping)
        return mapping
    if tp is tuple:
        for item in <tuple>value:
            if not _atomic(item):
                return _snapshot(value, {})
        return value
    if tp is bytearray:
        return bytes(value)
    if tp is frozenset:
        return value
    return _snapshot(value, {})


cdef inline object _frozen(dict attrs):
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef bint changed = False
    while PyDict_Next(attrs, &pos, &key, &value):
        if not _atomic(<object>value):
            changed = True
            break
    if not changed:
        return attrs
    # Values are replaced, not keys: the dict's size stays, so walking it while writing is safe.
    for k, v in attrs.items():
        if not _atomic(v):
            attrs[k] = _copy(v)
    return attrs


# The open-spans set is cleared in place (never replaced), so one reference serves for good.
cdef set _open_spans = runtime.open_spans
cdef dict _STATUS_NAMES = {"unset": 0, "ok": 1, "error": 2}
cdef const char* _HEXDIGITS = b"0123456789abcdef"
# Per code object: (filename, module name). Bounded so exec'd code cannot grow it forever.
cdef dict _code_info = {}


def reseed():
    """Fresh random state (at import, and in the child after fork)."""
    cdef bytes raw = os.urandom(32)
    cdef const unsigned char* p = raw
    cdef int i, j
    for i in range(4):
        atrace_rng[i] = 0
        for j in range(8):
            atrace_rng[i] = (atrace_rng[i] << 8) | p[i * 8 + j]
    if atrace_rng[0] == 0 and atrace_rng[1] == 0 and atrace_rng[2] == 0 and atrace_rng[3] == 0:
        atrace_rng[0] = 0x9E3779B97F4A7C15


reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reseed)


cdef inline str _trace_id():
    cdef uint64_t ms = <uint64_t>(atrace_now_ns() // 1000000) & 0xFFFFFFFFFFFF
    cdef uint64_t hi = (ms << 16) | (atrace_next() >> 48)
    return _hex128(hi, atrace_next())


cdef inline int64_t _span_id():
    cdef uint64_t r = atrace_next()
    while r == 0:
        r = atrace_next()
    return <int64_t>r


def new_trace_id():
    """A 32-hex-digit trace id: 48-bit millisecond timestamp, then 80 random bits."""
    return _trace_id()


def new_span_id():
    """A random non-zero span id as a signed 64-bit integer (the PostgreSQL ``bigint`` form)."""
    return _span_id()


def get_current():
    """The current span (or remote parent) of this context, or None."""
    return get_value(_current)


def set_current(value):
    """Make ``value`` the current span; returns the token to reset with."""
    return PyContextVar_Set(_current, value)


cpdef reset_current(token, parent):
    """Restore the context a span replaced, even from a different Context.

    A generator closed by the garbage collector, or a task cancelled and finalised elsewhere, exits
    its span in a Context other than the one that entered it; ``ContextVar.reset`` then raises
    ValueError. Setting the parent back is the correct outcome there, and never raises.
    """
    try:
        PyContextVar_Reset(_current, token)
    except ValueError:
        PyContextVar_Set(_current, parent)


cdef class _CodeInfo:
    """What a call site's code object tells once: file, module, and "file:line" per line."""

    cdef str filename
    cdef object module
    cdef dict lines


cdef inline _CodeInfo _code_entry(PyFrameObject* frame):
    cdef object code = atrace_frame_code(frame)
    cdef _CodeInfo info
    found = _code_info.get(code)
    if found is not None:
        return <_CodeInfo>found
    if len(_code_info) > 10000:
        _code_info.clear()
    info = _CodeInfo.__new__(_CodeInfo)
    info.filename = code.co_filename
    info.module = (<object>frame).f_globals.get("__name__")
    info.lines = {}
    _code_info[code] = info
    return info


cdef inline object _line_text(PyFrameObject* frame, _CodeInfo info):
    # One "file:line" string per call site, made once: nothing is allocated per record.
    cdef int lineno = PyFrame_GetLineNumber(frame)
    loc = info.lines.get(lineno)
    if loc is None:
        loc = f"{info.filename}:{lineno}"
        if len(info.lines) < 4096:
            info.lines[lineno] = loc
    return loc


cdef inline atrace_site* _site(PyFrameObject* frame):
    # The call site's cache entry, filled on a miss: location and module, read by the caller.
    cdef PyObject* code
    cdef int lasti
    cdef atrace_site* site = atrace_site_slot(frame, &code, &lasti)
    cdef _CodeInfo info
    if not atrace_site_hit(site, code, lasti):
        info = _code_entry(frame)
        location = _line_text(frame, info)
        atrace_site_fill(site, code, lasti, <PyObject*>location, <PyObject*>info.module)
    return site


cdef inline object _location():
    cdef PyFrameObject* frame = PyEval_GetFrame()
    if frame is NULL:
        return None
    return <object>_site(frame).location


cdef inline str _hex128(uint64_t hi, uint64_t lo):
    cdef char buf[32]
    cdef int i
    for i in range(16):
        buf[15 - i] = _HEXDIGITS[hi & 15]
        hi >>= 4
        buf[31 - i] = _HEXDIGITS[lo & 15]
        lo >>= 4
    return PyUnicode_DecodeASCII(buf, 32, NULL)


# Positional, unlike atrace's other value classes: users and the package build it as
# SpanContext(trace_id, span_id). An extension type: a request's remote parent is built per
# request, and readonly fields make it immutable at no cost.
cdef class SpanContext:
    """A parent that is not a live span here: a remote caller, or a trace_context block.

    :ivar trace_id: the trace, as 32 hex digits.
    :ivar span_id: the parent span as a signed 64-bit integer, or None (a trace without a
        parent span here).
    :ivar flags: the W3C trace flags (8 bits) as the caller sent them: bit 0 "sampled", bit 1
        "random trace id". Spans under it keep only those two, as the W3C asks of unknown flags.
    :ivar trace_state: the caller's ``tracestate``, validated and normalised ("" when none).
    :ivar sampled: bit 0 of ``flags``; ``sampled=`` given to the constructor sets that bit.
    """

    cdef readonly object trace_id
    cdef readonly object span_id
    cdef readonly int flags
    cdef readonly str trace_state

    def __init__(self, trace_id, span_id=None, sampled=None, *, flags=1, trace_state=""):
        if type(flags) is not int or not 0 <= flags <= 255:
            from ..errors import ConfigError

            raise ConfigError("flags", flags, "expected an integer from 0 to 255")
        if type(trace_state) is not str:
            from ..errors import ConfigError

            raise ConfigError("trace_state", trace_state, "expected a tracestate value (str)")
        if sampled is not None:
            flags = (flags & 0xFE) | (1 if sampled else 0)
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state

    @property
    def sampled(self):
        """Whether the caller may have recorded its part of the trace (W3C flag bit 0)."""
        return bool(self.flags & 1)

    def __repr__(self):
        # The span id in the hex form that traceparent headers and the CLI show; flags and
        # tracestate only when they say more than a plain sampled parent.
        sid = None if self.span_id is None else "%016x" % (self.span_id & 0xFFFFFFFFFFFFFFFF)
        extra = "" if self.flags == 1 else f", flags={self.flags:#04x}"
        if self.trace_state:
            extra += f", trace_state={self.trace_state!r}"
        return f"SpanContext(trace_id={self.trace_id!r}, span_id={sid!r}{extra})"

    def __eq__(self, other):
        if type(other) is not SpanContext:
            return NotImplemented
        cdef SpanContext o = <SpanContext>other
        return (
            self.trace_id == o.trace_id and self.span_id == o.span_id and self.flags == o.flags
            and self.trace_state == o.trace_state
        )

    def __hash__(self):
        return hash((self.trace_id, self.span_id, self.flags, self.trace_state))

    def __reduce__(self):
        return (_span_context, (self.trace_id, self.span_id, self.flags, self.trace_state))

    def as_dict(self):
        """The fields as a plain dict."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "flags": self.flags,
            "trace_state": self.trace_state,
        }

    def replace(self, **changes):
        """A copy with some fields changed (``sampled=`` sets bit 0 of the flags)."""
        return SpanContext(**{**self.as_dict(), **changes})


def _span_context(trace_id, span_id, flags, trace_state):
    # What pickle calls: the flags and tracestate are keyword-only in the constructor.
    return SpanContext(trace_id, span_id, flags=flags, trace_state=trace_state)


cdef class Span:
    """One timed operation. Enter it with ``with`` or ``async with``; it is the current span inside.

    The span itself is the record: on exit it goes into the buffer as it is, and the flusher
    turns it into a row (one row, or an end row when it already wrote a start row because the
    span was still running at a flush). A span object is meant to be entered once.
    """

    cdef public object name
    cdef public object attrs
    cdef public object location
    cdef public object service
    cdef public object error
    cdef public object parent_id
    cdef public object _parent
    cdef public object _token
    cdef public object status_message
    cdef public object links  # as slow.span_links gives them; None when there are none
    cdef object _tid  # trace id text; None while only _hi/_lo hold it (formatted on demand)
    cdef object _ts  # the tracestate inherited from the parent; None when there is none
    cdef uint64_t _hi
    cdef uint64_t _lo
    cdef int64_t _sid  # 0 until the span starts
    cdef int _flags  # W3C trace flags: 1 sampled (recorded), 2 random trace id
    cdef public int status
    cdef int _kind  # OpenTelemetry's SpanKind number; 0 until set, which reads as internal
    cdef public int level
    cdef public bint announced
    cdef public int64_t start_ns
    cdef public int64_t end_ns

    def __init__(self, name, attrs=None, location=None, service=None, kind=1, links=None):
        self.name = name
        self.attrs = None if attrs is None else _frozen(attrs)
        self.location = location
        self.service = service
        self._kind = kind
        self.links = links or None

    @property
    def trace_id(self):
        """The trace id as 32 hex digits ("" before the span starts)."""
        if self._tid is None:
            if self._sid == 0:
                return ""
            self._tid = _hex128(self._hi, self._lo)
        return self._tid

    @property
    def span_id(self):
        """The span id as a signed 64-bit integer (None before the span starts)."""
        return None if self._sid == 0 else self._sid

    @property
    def duration_ns(self):
        """Nanoseconds from start to end (None while running)."""
        return None if self.end_ns == 0 else self.end_ns - self.start_ns

    @property
    def kind(self):
        """OpenTelemetry's span kind, as stored: 1 internal, 2 server, 3 client, 4 producer,
        5 consumer (see :class:`~atrace.SpanKind`)."""
        return self._kind or 1

    @kind.setter
    def kind(self, value):
        self._kind = value

    @property
    def flags(self):
        """The W3C trace flags this span propagates: 1 sampled, 2 random trace id (0 before it
        starts). A span whose parent was not sampled is not recorded, nor are its children."""
        return self._flags

    @property
    def trace_state(self):
        """The W3C ``tracestate`` this span propagates, as its remote parent sent it ("" if
        none)."""
        return "" if self._ts is None else self._ts

    cpdef _begin(self, parent):
        cdef Span p
        cdef SpanContext c
        if parent is None:
            self._hi = ((<uint64_t>(atrace_now_ns() // 1000000) & 0xFFFFFFFFFFFF) << 16) | (atrace_next() >> 48)
            self._lo = atrace_next()
            self.parent_id = None
            # Sampled, and the id's right-most 7 bytes are random (the W3C "random" flag).
            self._flags = 3
        elif type(parent) is Span:
            p = <Span>parent
            self._tid = p._tid
            self._hi = p._hi
            self._lo = p._lo
            self.parent_id = p._sid
            self._flags = p._flags
            self._ts = p._ts
        elif type(parent) is SpanContext:
            c = <SpanContext>parent
            self._tid = c.trace_id
            self.parent_id = c.span_id
            # Flags this version does not define go out as zero (W3C).
            self._flags = c.flags & 3
            if c.trace_state:
                self._ts = c.trace_state
        else:
            self._tid = parent.trace_id
            self.parent_id = parent.span_id
            self._flags = getattr(parent, "flags", 1) & 3
            self._ts = getattr(parent, "trace_state", None) or None
        self._parent = parent
        self._sid = _span_id()
        if self._flags & 1:
            # A span that is not recorded is never announced either.
            PySet_Add(_open_spans, self)
        self.start_ns = atrace_now_ns()

    cpdef _end(self, exc):
        self.end_ns = atrace_now_ns()
        cdef bint recorded = self._flags & 1
        if recorded:
            PySet_Discard(_open_spans, self)
        if exc is not None:
            if recorded:
                self.error, self.attrs = _catch(exc, self.span_id, True, self.attrs)
            # Cancellation and generator close are control flow: keep the cause, not a failure.
            if isinstance(exc, Exception):
                self.status = 2
        # A span that did not fail stays unset unless its status was set (OpenTelemetry).
        self.level = 40 if self.status == 2 else 20
        if not recorded:
            # Its parent was not sampled (OpenTelemetry's ParentBased sampler): the span keeps
            # its ids for its children and outgoing calls, and no row is written.
            return
        if self.error is None:
            # Out of the collector's lists while buffered (see _log); back in when encoded. A
            # failed span keeps being tracked: its traceback may lead back to it.
            PyObject_GC_UnTrack(self)
        _runtime.push(self)

    def _record(self):
        """The row-shaped tuple of the ended span (built by the flusher, not on the hot path)."""
        if not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)
        return (
            2 if self.announced else 3,
            self.start_ns,
            self.level,
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.end_ns - self.start_ns,
            self.status,
            self.service,
            self.name,
            None,
            self.attrs,
            self.error,
            self.location,
            self._kind or 1,
            self._ts,
            self._flags,
            self.status_message,
            self.links,
        )

    def _start_record(self):
        """The start row of a span still running: it makes a long span visible before it ends."""
        return (
            1,
            self.start_ns,
            20,
            self.trace_id,
            self.span_id,
            self.parent_id,
            None,
            0,
            self.service,
            self.name,
            None,
            None if self.attrs is None else dict(self.attrs),
            None,
            self.location,
            self._kind or 1,
            self._ts,
            self._flags,
            None,
            None,
        )

    def __enter__(self):
        parent = get_value(_current)
        if parent is None:
            parent = self._parent
        self._begin(parent)
        self._token = PyContextVar_Set(_current, self)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            PyContextVar_Reset(_current, self._token)
        except ValueError:
            PyContextVar_Set(_current, self._parent)
        self._token = None
        self._end(exc)

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb):
        self.__exit__(exc_type, exc, tb)

    def set(self, **attrs):
        """Add or replace attributes of this span."""
        _frozen(attrs)
        if self.attrs is None:
            self.attrs = attrs
        else:
            self.attrs.update(attrs)
        return self

    set_attributes = set

    def set_status(self, status, message=None):
        """Set the outcome: ``"ok"``, ``"error"`` or ``"unset"`` (an exception sets error).

        A span that ends without failing and without a status set stays unset, which is
        healthy (OpenTelemetry's rule). ``message`` describes an error, kept apart from any
        exception's message; with ``"ok"`` or ``"unset"`` it is ignored, as OpenTelemetry asks.
        """
        code = _STATUS_NAMES.get(status) if isinstance(status, str) else status
        if code not in (0, 1, 2):
            from ..errors import ConfigError

            raise ConfigError("status", status, "expected 'ok', 'error' or 'unset'")
        self.status = code
        self.status_message = None if code != 2 or message is None else str(message)
        return self

    def record_exception(self, exc, *, failed=True):
        """Record a handled exception on this span; by default the span is then marked failed."""
        # A span that will never be written (started under a not-sampled parent) must not
        # claim the exception; one not started yet may still be.
        if self._flags & 1 or self._sid == 0:
            self.error, self.attrs = _catch(exc, self.span_id, True, self.attrs)
        if failed:
            self.status = 2
        return self

    @property
    def span_id_hex(self):
        """The span id as 16 hex digits (the W3C form)."""
        return None if self._sid == 0 else "%016x" % (<uint64_t>self._sid)

    def __repr__(self):
        return f"<Span {self.name!r} trace={self.trace_id} span={self.span_id_hex}>"

    def __call__(self, fn):
        """``@atrace.span("name")`` on a function: a mistake, answered with what to use."""
        misused(fn)


# The operations the pipeline, the integrations and the span helpers need on a span that they do
# not enter with ``with``: functions here, so Span's own surface stays what users see.
def begin(Span span, parent, bint keep_parent=True):
    """Start ``span`` under ``parent`` (a span, a SpanContext or None) without making it current;
    ``keep_parent=False`` lets go of the parent once its ids are copied."""
    span._begin(parent)
    if not keep_parent:
        span._parent = None


def end(Span span, exc):
    """End a span started with :func:`begin`; ``exc`` is its failure, or None."""
    span._end(exc)


def start_record(Span span):
    """The start row of a span still running (a long span is visible before it ends)."""
    return span._start_record()


def parent_of(Span span):
    """The parent ``span`` was started under (a span, a SpanContext or None)."""
    return span._parent


def set_parent(Span span, parent):
    """Start ``span`` under ``parent`` when it is entered outside any current span."""
    span._parent = parent


def span(name, /, **attrs):
    """A span named ``name`` with attributes; use ``with`` or ``async with``.

    ``kind=``: ``"internal"`` (the default), ``"server"``, ``"client"``, ``"producer"`` or
    ``"consumer"`` (or a :class:`~atrace.SpanKind`), OpenTelemetry's span kinds; the span's
    own, not an attribute. ``links=``: spans this one is causally related to (a batch's
    messages, the request that scheduled a job), each a :class:`SpanContext`, a span, an
    OpenTelemetry ``SpanContext`` or ``Link``, or a ``(trace_id, span_id[, attributes])``
    tuple; also the span's own, not an attribute.
    """
    if type(name) is not str and callable(name):
        misused(name)
    cdef Span sp = Span.__new__(Span)
    sp.name = name
    if attrs:
        # ``kind`` and ``links`` are the span's own, not attributes (read here: keyword-only
        # parameters beside **attrs would cost every call their parsing).
        if "kind" in attrs:
            sp._kind = span_kind(attrs.pop("kind"))
        if "links" in attrs:
            sp.links = span_links(attrs.pop("links")) or None
        sp.attrs = _frozen(attrs) if attrs else None
    sp.location = _location()
    return sp


cdef inline _log(int level, msg, dict attrs):
    cdef PyFrameObject* frame = PyEval_GetFrame()
    cdef atrace_site* site
    cdef object name = None
    cdef object location = None
    if frame is not NULL:
        site = _site(frame)
        name = <object>site.module
        location = <object>site.location
    cdef object trace_id = None
    cdef object span_id = None
    cur = get_value(_current)
    if cur is not None:
        trace_id = cur.trace_id
        span_id = cur.span_id
    rec = (0, atrace_now_ns(), level, trace_id, span_id, None, None, 0, None, name, msg,
           _frozen(attrs) if attrs else None, None, location)
    # Nothing but the ring will ever refer to this tuple, so it cannot be part of a reference
    # cycle: keeping it out of the garbage collector's lists spares every collection from
    # walking a buffer of records.
    PyObject_GC_UnTrack(rec)
    _runtime.push(rec)


cdef inline _log_full(int level, msg, dict attrs, exc_info, exception, error_message,
                      stack_trace, module, extra):
    _runtime.push(_build(level, msg, attrs, exc_info, exception, error_message, stack_trace,
                         module, extra, 0))


def debug(msg, /, *args, exc_info=False, exception=None, error_message=None, stack_trace=None,
          module=None, extra=None, **attrs):
    """Emit a debug log linked to the current span; keyword arguments become attributes."""
    if args:
        msg = format_message(msg, args)
    if (exc_info is False and exception is None and error_message is None
            and stack_trace is None and module is None and extra is None):
        _log(10, msg, attrs)
    else:
        _log_full(10, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)


def info(msg, /, *args, exc_info=False, exception=None, error_message=None, stack_trace=None,
         module=None, extra=None, **attrs):
    """Emit an info log linked to the current span; keyword arguments become attributes."""
    if args:
        msg = format_message(msg, args)
    if (exc_info is False and exception is None and error_message is None
            and stack_trace is None and module is None and extra is None):
        _log(20, msg, attrs)
    else:
        _log_full(20, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)


def warning(msg, /, *args, exc_info=False, exception=None, error_message=None, stack_trace=None,
            module=None, extra=None, **attrs):
    """Emit a warning log linked to the current span; keyword arguments become attributes."""
    if args:
        msg = format_message(msg, args)
    if (exc_info is False and exception is None and error_message is None
            and stack_trace is None and module is None and extra is None):
        _log(30, msg, attrs)
    else:
        _log_full(30, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)


def error(msg, /, *args, exc_info=False, exception=None, error_message=None, stack_trace=None,
          module=None, extra=None, **attrs):
    """Emit an error log linked to the current span; keyword arguments become attributes."""
    if args:
        msg = format_message(msg, args)
    if (exc_info is False and exception is None and error_message is None
            and stack_trace is None and module is None and extra is None):
        _log(40, msg, attrs)
    else:
        _log_full(40, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)


def exception(msg, /, *args, exc_info=True, exception=None, error_message=None, stack_trace=None,
              module=None, extra=None, **attrs):
    """Emit an error log with the exception being handled (outside an except: the caller's stack)."""
    if args:
        msg = format_message(msg, args)
    _log_full(40, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)


def critical(msg, /, *args, exc_info=False, exception=None, error_message=None, stack_trace=None,
             module=None, extra=None, **attrs):
    """Emit a critical log linked to the current span; keyword arguments become attributes."""
    if args:
        msg = format_message(msg, args)
    if (exc_info is False and exception is None and error_message is None
            and stack_trace is None and module is None and extra is None):
        _log(50, msg, attrs)
    else:
        _log_full(50, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra)
