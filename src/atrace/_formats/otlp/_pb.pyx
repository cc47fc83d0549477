# cython: language_level=3, boundscheck=False, wraparound=False
"""OTLP protobuf requests as atrace rows, read straight off the wire (compiled; the twin is
``_pb_py``, which reads them through the official upb classes).

A body is read twice. The first pass checks it as upb's parser does (every length against its
message, tags and varints, UTF-8 of string fields, nesting depth, unknown fields of every wire
type) and counts the records, so a bad body is refused with the twin's message before any row
exists. The second pass builds the rows from the checked bytes without message objects. Values
the protobuf rules merge (a KeyValue's value or an AnyValue's array sent twice) are rare enough
to go through the official classes and the value walkers the twin uses (``pb_values``), which
keeps them identical.

Both passes take the messages' layout from one table (``_SCHEMA``), and both requests share
the walk from resource to scope to item (``_Walk``); only a span and a log record are read
their own way.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_DecodeUTF8, PyUnicode_New
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

import orjson

from .common import FILE_KEYS, MAX_ANY_DEPTH, OTLP_STATUS_ERROR, W3C_FLAGS_MASK
from .rows import (
    KEY_CHARS,
    LONG_VALUE_CHARS,
    MAX_SPAN_KIND,
    MESSAGE_CHARS,
    NAME_CHARS,
    TRACE_STATE_CHARS,
    VALUE_CHARS,
    Event,
    Link,
    clean_key,
    flags_doc,
    log_row,
    origin,
    pop_location,
    Resource,
    span_rows,
    clean_text,
    too_many,
)
from ..._pipeline.sanitize import sanitize_text
from ...errors import WireError
from .pb_values import pb_any, pb_body, pb_into
from ..resources import NonFinite

# After .common, which turns a missing opentelemetry-proto into a one-line MissingExtraError.
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ("decode_logs_pb", "decode_traces_pb")

ctypedef const uint8_t* cptr

cdef Py_ssize_t KEY_LIMIT = KEY_CHARS
cdef Py_ssize_t VALUE_LIMIT = VALUE_CHARS
cdef Py_ssize_t NAME_LIMIT = NAME_CHARS
cdef Py_ssize_t MESSAGE_LIMIT = MESSAGE_CHARS
cdef Py_ssize_t TRACE_STATE_LIMIT = TRACE_STATE_CHARS
cdef int MAX_DEPTH = MAX_ANY_DEPTH
cdef int32_t STATUS_ERROR = OTLP_STATUS_ERROR
cdef int32_t KIND_LAST = MAX_SPAN_KIND
cdef uint32_t W3C_FLAGS = W3C_FLAGS_MASK
cdef dict LONG_VALUES = LONG_VALUE_CHARS
cdef object FILE_KEY, FILE_KEY_NEW
FILE_KEY, FILE_KEY_NEW = FILE_KEYS
cdef object _dumps = orjson.dumps
cdef str TOO_DEEP_TEXT = "<too deep>"
cdef bytes _EMPTY = b""
# Beyond this, max_records cannot be reached by any body; clamping keeps the budget a C integer.
cdef Py_ssize_t RECORDS_CAP = 1 << 62

# upb's nesting limit for python's parser (kUpb_WireFormat_DefaultDepthLimit).
cdef int UPB_DEPTH = 100
cdef uint64_t NO_GROUP = 0xFFFFFFFF
cdef uint64_t MAX_SIZE = 0x7FFFFFFF

# Outcomes of the check, worded as upb words them.
cdef enum:
    OK = 0
    CORRUPT = 1
    BAD_UTF8 = 2
    TOO_DEEP = 3

_REASONS = {
    CORRUPT: "Wire format was corrupt",
    BAD_UTF8: "String field had bad UTF-8",
    TOO_DEEP: "Exceeded upb_DecodeOptions_MaxDepth",
}

# ---- the schema -----------------------------------------------------------------------------

# Message types of ExportTraceServiceRequest and ExportLogsServiceRequest.
cdef enum:
    M_UNKNOWN = 0
    M_TRACES
    M_RESOURCE_SPANS
    M_SCOPE_SPANS
    M_SPAN
    M_EVENT
    M_LINK
    M_STATUS
    M_RESOURCE
    M_SCOPE
    M_KEY_VALUE
    M_ANY
    M_ARRAY
    M_KVLIST
    M_ENTITY_REF
    M_LOGS
    M_RESOURCE_LOGS
    M_SCOPE_LOGS
    M_LOG_RECORD
    M_COUNT

# The fields read, by number (opentelemetry-proto 1.x). A message read whole (``_read``) goes
# into slots indexed by field number: its _SLOTS is one past the highest field read.
cdef enum:
    ENVELOPE_RESOURCES = 1  # ExportTraceServiceRequest.resource_spans, ...Logs...resource_logs
    ENVELOPE_RESOURCE = 1  # ResourceSpans/ResourceLogs.resource
    ENVELOPE_SCOPES = 2  # ResourceSpans.scope_spans, ResourceLogs.scope_logs
    ENVELOPE_SCOPE = 1  # ScopeSpans/ScopeLogs.scope
    ENVELOPE_ITEMS = 2  # ScopeSpans.spans, ScopeLogs.log_records
    ENVELOPE_SCHEMA_URL = 3  # of a ResourceSpans/ResourceLogs or ScopeSpans/ScopeLogs
    SPAN_TRACE_ID = 1
    SPAN_SPAN_ID = 2
    SPAN_TRACE_STATE = 3
    SPAN_PARENT_ID = 4
    SPAN_NAME = 5
    SPAN_KIND = 6
    SPAN_START = 7
    SPAN_END = 8
    SPAN_ATTRS = 9
    SPAN_EVENTS = 11
    SPAN_LINKS = 13
    SPAN_STATUS = 15
    SPAN_FLAGS = 16
    SPAN_SLOTS = 17
    EVENT_TIME = 1
    EVENT_NAME = 2
    EVENT_ATTRS = 3
    EVENT_SLOTS = 4
    LINK_TRACE_ID = 1
    LINK_SPAN_ID = 2
    LINK_TRACE_STATE = 3
    LINK_ATTRS = 4
    LINK_FLAGS = 6
    LINK_SLOTS = 7
    STATUS_MESSAGE = 2
    STATUS_CODE = 3
    STATUS_SLOTS = 4
    SCOPE_NAME = 1
    SCOPE_VERSION = 2
    SCOPE_ATTRS = 3
    SCOPE_SLOTS = 4
    KV_KEY = 1
    KV_VALUE = 2
    LOG_TIME = 1
    LOG_SEVERITY = 2
    LOG_SEVERITY_TEXT = 3
    LOG_BODY = 5
    LOG_ATTRS = 6
    LOG_FLAGS = 8
    LOG_TRACE_ID = 9
    LOG_SPAN_ID = 10
    LOG_OBSERVED = 11
    LOG_EVENT_NAME = 12
    LOG_SLOTS = 13
    RESOURCE_ATTRS = 1
    ARRAY_VALUES = 1
    KVLIST_VALUES = 1

# Of each message, the fields this module knows: a message type (parsed and checked as that
# message), "string" (UTF-8 checked), "bytes" (only the length matters), or the wire type of a
# scalar ("varint", "fixed64" or "fixed32"). Any other field, or one sent with another wire
# type, is an unknown field.
_SCHEMA = {
    M_SPAN: {
        SPAN_TRACE_ID: "bytes",
        SPAN_SPAN_ID: "bytes",
        SPAN_TRACE_STATE: "string",
        SPAN_PARENT_ID: "bytes",
        SPAN_NAME: "string",
        SPAN_KIND: "varint",
        SPAN_START: "fixed64",
        SPAN_END: "fixed64",
        SPAN_ATTRS: M_KEY_VALUE,
        SPAN_EVENTS: M_EVENT,
        SPAN_LINKS: M_LINK,
        SPAN_STATUS: M_STATUS,
        SPAN_FLAGS: "fixed32",
    },
    M_EVENT: {EVENT_TIME: "fixed64", EVENT_NAME: "string", EVENT_ATTRS: M_KEY_VALUE},
    M_LINK: {
        LINK_TRACE_ID: "bytes",
        LINK_SPAN_ID: "bytes",
        LINK_TRACE_STATE: "string",
        LINK_ATTRS: M_KEY_VALUE,
        LINK_FLAGS: "fixed32",
    },
    M_STATUS: {STATUS_MESSAGE: "string", STATUS_CODE: "varint"},
    M_RESOURCE: {RESOURCE_ATTRS: M_KEY_VALUE, 3: M_ENTITY_REF},
    M_SCOPE: {SCOPE_NAME: "string", SCOPE_VERSION: "string", SCOPE_ATTRS: M_KEY_VALUE},
    M_KEY_VALUE: {KV_KEY: "string", KV_VALUE: M_ANY},
    M_ANY: {1: "string", 5: M_ARRAY, 6: M_KVLIST},  # (the oneof is read by ``_scan_any``)
    M_ARRAY: {ARRAY_VALUES: M_ANY},
    M_KVLIST: {KVLIST_VALUES: M_KEY_VALUE},
    M_ENTITY_REF: {1: "string", 2: "string", 3: "string", 4: "string"},
    M_LOG_RECORD: {
        LOG_TIME: "fixed64",
        LOG_SEVERITY: "varint",
        LOG_SEVERITY_TEXT: "string",
        LOG_BODY: M_ANY,
        LOG_ATTRS: M_KEY_VALUE,
        LOG_FLAGS: "fixed32",
        LOG_TRACE_ID: "bytes",
        LOG_SPAN_ID: "bytes",
        LOG_OBSERVED: "fixed64",
        LOG_EVENT_NAME: "string",
    },
}
# The envelope, alike in both requests: resources, each with scopes, each with items.
for _top, _resource_x, _scope_x, _item in (
    (M_TRACES, M_RESOURCE_SPANS, M_SCOPE_SPANS, M_SPAN),
    (M_LOGS, M_RESOURCE_LOGS, M_SCOPE_LOGS, M_LOG_RECORD),
):
    _SCHEMA[_top] = {ENVELOPE_RESOURCES: _resource_x}
    _SCHEMA[_resource_x] = {
        ENVELOPE_RESOURCE: M_RESOURCE,
        ENVELOPE_SCOPES: _scope_x,
        ENVELOPE_SCHEMA_URL: "string",
    }
    _SCHEMA[_scope_x] = {
        ENVELOPE_SCOPE: M_SCOPE,
        ENVELOPE_ITEMS: _item,
        ENVELOPE_SCHEMA_URL: "string",
    }
del _top, _resource_x, _scope_x, _item

# What a length-delimited field holds.
cdef enum:
    F_OTHER = 0  # bytes, or a field this schema does not know: only its length matters
    F_STRING = 1  # UTF-8 checked
    F_MESSAGE = 2  # parsed (and checked) as the message type given alongside

cdef enum:
    MAX_FIELD = 17  # the schema's field numbers are below this
    NOT_READ = 7  # the wire type of a field the schema does not know (no field has it)

cdef struct FieldType:
    uint8_t wt  # the field's wire type
    uint8_t kind  # of a length-delimited field: F_OTHER, F_STRING or F_MESSAGE
    uint8_t sub  # of an F_MESSAGE field: its message type

cdef FieldType _FIELDS[M_COUNT][MAX_FIELD]


cdef int _load_schema(dict schema) except -1:
    cdef int m, n
    cdef FieldType* t
    for m in range(M_COUNT):
        for n in range(MAX_FIELD):
            _FIELDS[m][n].wt = NOT_READ
            _FIELDS[m][n].kind = F_OTHER
            _FIELDS[m][n].sub = M_UNKNOWN
    for m, fields in schema.items():
        for n, what in fields.items():
            if not 0 < n < MAX_FIELD:
                raise ValueError(f"field {n} is beyond the schema table")
            t = &_FIELDS[m][n]
            if what == "varint":
                t.wt = 0
            elif what == "fixed64":
                t.wt = 1
            elif what == "fixed32":
                t.wt = 5
            else:
                t.wt = 2
                if what == "string":
                    t.kind = F_STRING
                elif what != "bytes":
                    t.kind = F_MESSAGE
                    t.sub = what
    return 0


_load_schema(_SCHEMA)


# ---- wire primitives ------------------------------------------------------------------------


cdef inline cptr _varint(cptr p, cptr end, uint64_t* out) noexcept nogil:
    # At most ten bytes; bits past the 64th are dropped, as upb does.
    cdef uint64_t v = 0
    cdef uint64_t b
    cdef int shift = 0
    if p < end and p[0] < 0x80:
        out[0] = p[0]
        return p + 1
    while shift < 70:
        if p >= end:
            return NULL
        b = p[0]
        p += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            out[0] = v
            return p
        shift += 7
    return NULL


cdef inline cptr _tag(cptr p, cptr end, uint64_t* out) noexcept nogil:
    # A tag is a varint of at most five bytes that fits 32 bits.
    cdef cptr start = p
    p = _varint(p, end, out)
    if p == NULL or p - start > 5 or out[0] > 0xFFFFFFFFULL:
        return NULL
    return p


cdef inline uint64_t _le64(cptr p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef inline uint64_t _be64(cptr p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline bint _zero(cptr p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef bint _utf8(cptr p, uint64_t n) noexcept nogil:
    # Well-formed UTF-8 as Unicode's table 3-7 has it (no overlongs, surrogates or > U+10FFFF),
    # which is what both upb and python's strict decoder accept.
    cdef uint64_t i = 0, t, more
    cdef uint64_t word
    cdef uint8_t c, c1, lo, hi
    while i < n:
        while i + 8 <= n:
            memcpy(&word, p + i, 8)
            if word & 0x8080808080808080ULL:
                break
            i += 8
        if i >= n:
            break
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        # A lead byte: how many continuation bytes follow, and the range of the first of them.
        lo = 0x80
        hi = 0xBF
        if c < 0xC2:
            return False
        elif c < 0xE0:
            more = 1
        elif c < 0xF0:
            more = 2
            if c == 0xE0:
                lo = 0xA0  # (no overlongs)
            elif c == 0xED:
                hi = 0x9F  # (no surrogates)
        elif c < 0xF5:
            more = 3
            if c == 0xF0:
                lo = 0x90  # (no overlongs)
            elif c == 0xF4:
                hi = 0x8F  # (nothing past U+10FFFF)
        else:
            return False
        if i + more >= n:
            return False
        c1 = p[i + 1]
        if c1 < lo or c1 > hi:
            return False
        for t in range(2, more + 1):
            if (p[i + t] & 0xC0) != 0x80:
                return False
        i += more + 1
    return True


# ---- the check: upb's verdict on a body, and its record count --------------------------------


cdef struct Check:
    int status
    cptr end  # of the body
    int counted  # the message type whose occurrences are counted (spans or log records)
    Py_ssize_t count


cdef inline cptr _fail(Check* c, int status) noexcept nogil:
    c.status = status
    return NULL


cdef cptr _check(Check* c, cptr p, cptr end, int m, int depth, uint64_t group) noexcept nogil:
    # Mirrors upb's decode loop, so that the first fault met decides the outcome as there: the
    # parts of a field (tag, length, value) are read against the end of the body, and only
    # between fields is the position held to the message's end.
    cdef cptr stop = c.end
    cdef uint64_t tag, n, size
    cdef int wt, sub = 0, kind
    while p < end:
        p = _tag(p, stop, &tag)
        if p == NULL:
            return _fail(c, CORRUPT)
        n = tag >> 3
        wt = <int>(tag & 7)
        if wt == 4:
            if n == group and p <= end:
                return p
            return _fail(c, CORRUPT)  # an end-group tag that closes nothing open
        if n == 0 and m != M_UNKNOWN:
            return _fail(c, CORRUPT)  # (upb skips a group without looking at its field numbers)
        if wt == 0:
            p = _varint(p, stop, &size)
            if p == NULL:
                return _fail(c, CORRUPT)
        elif wt == 1:
            if stop - p < 8:
                return _fail(c, CORRUPT)
            p += 8
        elif wt == 5:
            if stop - p < 4:
                return _fail(c, CORRUPT)
            p += 4
        elif wt == 2:
            p = _varint(p, stop, &size)
            if p == NULL or size >= MAX_SIZE or size > <uint64_t>(stop - p):
                return _fail(c, CORRUPT)
            kind = F_OTHER
            if n < MAX_FIELD:
                kind = _FIELDS[m][n].kind
                sub = _FIELDS[m][n].sub
            if kind == F_STRING:
                # Checked before upb sees that the string overran its message.
                if not _utf8(p, size):
                    return _fail(c, BAD_UTF8)
            if p > end or size > <uint64_t>(end - p):
                return _fail(c, CORRUPT)
            if kind == F_MESSAGE:
                if depth == 0:
                    return _fail(c, TOO_DEEP)
                if sub == c.counted:
                    c.count += 1
                if _check(c, p, p + size, sub, depth - 1, NO_GROUP) == NULL:
                    return NULL
            p += size
        elif wt == 3:
            # No field of these protos is a group: every group is unknown, skipped whole, and
            # upb's skipping reports nesting beyond its limit as a corrupt body.
            if p >= end or depth == 0:
                return _fail(c, CORRUPT)
            p = _check(c, p, end, M_UNKNOWN, depth - 1, n)
            if p == NULL:
                return NULL
        else:
            return _fail(c, CORRUPT)
        if p > end:
            return _fail(c, CORRUPT)  # the field ran past the end of its message
    if group != NO_GROUP:
        return _fail(c, CORRUPT)  # the group's end tag never came
    return p


cdef Py_ssize_t _checked(bytes body, int top, int counted, str type_name) except -1:
    cdef Check c
    cdef cptr p = <cptr>PyBytes_AS_STRING(body)
    c.status = OK
    c.end = p + PyBytes_GET_SIZE(body)
    c.counted = counted
    c.count = 0
    _check(&c, p, c.end, top, UPB_DEPTH, NO_GROUP)
    if c.status != OK:
        raise WireError(
            f"invalid protobuf {type_name.rpartition('.')[2]}: Error parsing message with type "
            f"'{type_name}': {_REASONS[c.status]}"
        )
    return c.count


# ---- reading checked bytes ------------------------------------------------------------------


cdef struct Field:
    uint64_t num
    int wt
    uint64_t val  # varint, fixed64 or fixed32 value
    cptr data  # length-delimited payload
    Py_ssize_t size


cdef cptr _skip_group(cptr p, cptr end, uint64_t num) noexcept nogil:
    cdef uint64_t tag, v
    cdef int wt
    while p < end:
        p = _tag(p, end, &tag)
        if p == NULL:
            return NULL
        wt = <int>(tag & 7)
        if wt == 4:
            return p if (tag >> 3) == num else NULL
        if wt == 0:
            p = _varint(p, end, &v)
        elif wt == 1:
            p = p + 8 if end - p >= 8 else NULL
        elif wt == 5:
            p = p + 4 if end - p >= 4 else NULL
        elif wt == 2:
            p = _varint(p, end, &v)
            if p != NULL:
                p = p + v if v <= <uint64_t>(end - p) else NULL
        elif wt == 3:
            p = _skip_group(p, end, tag >> 3)
        else:
            return NULL
        if p == NULL:
            return NULL
    return NULL


cdef inline cptr _next(cptr p, cptr end, Field* f) noexcept nogil:
    # One field of a checked message. NULL cannot happen after the check; callers still refuse.
    cdef uint64_t tag, v
    p = _tag(p, end, &tag)
    if p == NULL:
        return NULL
    f.num = tag >> 3
    f.wt = <int>(tag & 7)
    if f.wt == 2:
        p = _varint(p, end, &v)
        if p == NULL or v > <uint64_t>(end - p):
            return NULL
        f.data = p
        f.size = <Py_ssize_t>v
        return p + v
    if f.wt == 0:
        return _varint(p, end, &f.val)
    if f.wt == 1:
        if end - p < 8:
            return NULL
        f.val = _le64(p)
        return p + 8
    if f.wt == 5:
        if end - p < 4:
            return NULL
        f.val = <uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (
            <uint64_t>p[3] << 24
        )
        return p + 4
    if f.wt == 3:
        return _skip_group(p, end, f.num)
    return NULL


cdef object _broken():
    # Checked bytes that will not read back: a fault of this module, not of the body.
    return WireError("invalid protobuf: wire format was corrupt (unreadable after the check)")


cdef inline int _field(cptr* p, cptr end, Field* f) except -1:
    # The next field of a checked message into ``f``, moving ``p`` past it; 0 at the end.
    if p[0] >= end:
        return 0
    p[0] = _next(p[0], end, f)
    if p[0] == NULL:
        raise _broken()
    return 1


cdef struct Slot:
    cptr data  # a length-delimited field's payload
    Py_ssize_t size
    uint64_t val  # a varint, fixed64 or fixed32 field's value
    Py_ssize_t count  # how often the field came


cdef inline int _read(cptr p, cptr end, int m, Py_ssize_t n, Slot* s) except -1:
    # The fields numbered below ``n`` of a message of type ``m``, into ``s`` by number: of each,
    # the last value the wire gave (protobuf's rule for a scalar sent twice) and how often.
    cdef Field f
    cdef Slot* t
    cdef FieldType* types = _FIELDS[m]
    memset(s, 0, n * sizeof(Slot))
    memset(&f, 0, sizeof(Field))
    while _field(&p, end, &f):
        if f.num < <uint64_t>n and types[f.num].wt == f.wt:
            # (what the wire type did not set is left over from before, and never read)
            t = &s[f.num]
            t.data = f.data
            t.size = f.size
            t.val = f.val
            t.count += 1
    return 0


cdef inline bint _plain(cptr p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    # ASCII without NUL and within the limit: the text the sanitiser leaves as it is.
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    if n > limit:
        return False
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        # a high bit set, or a zero byte
        if (word & 0x8080808080808080ULL) or (
            (word - 0x0101010101010101ULL) & ~word & 0x8080808080808080ULL
        ):
            return False
        i += 8
    while i < n:
        if p[i] == 0 or p[i] >= 0x80:
            return False
        i += 1
    return True


cdef inline str _str(cptr p, Py_ssize_t n):
    # Checked UTF-8 (or known ASCII) as text.
    return PyUnicode_DecodeUTF8(<char*>p, n, NULL)


cdef inline str _ascii(cptr p, Py_ssize_t n):
    # Text known to be ASCII: copied in, no decoding.
    cdef str s
    if n == 0:
        return ""
    s = PyUnicode_New(n, 127)
    memcpy(PyUnicode_1BYTE_DATA(s), p, n)
    return s


cdef inline str _limited(cptr p, Py_ssize_t n, Py_ssize_t limit):
    # ``_text(value, limit)`` of the twin.
    if _plain(p, n, limit):
        return _ascii(p, n)
    return clean_text(_str(p, n), limit)


cdef str _hex(cptr p, Py_ssize_t n):
    cdef str s = PyUnicode_New(2 * n, 127)
    cdef uint8_t* out = <uint8_t*>PyUnicode_1BYTE_DATA(s)
    cdef const char* digits = b"0123456789abcdef"
    cdef Py_ssize_t i
    for i in range(n):
        out[2 * i] = digits[p[i] >> 4]
        out[2 * i + 1] = digits[p[i] & 15]
    return s


cdef inline bytes _bytes(cptr p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<char*>p, n)


# ---- the upb walkers, for the rare values that protobuf merges ------------------------------


cdef int _kv_by_upb(dict out, cptr p, cptr end, int depth) except -1:
    pb_into(out, [KeyValue.FromString(_bytes(p, end - p))], depth)
    return 0


cdef object _any_by_upb(bytes raw, int depth):
    return pb_any(AnyValue.FromString(raw), depth)


# ---- attribute values -----------------------------------------------------------------------


cdef struct AnyCase:
    int case  # the oneof field that is set (0: none)
    uint64_t val
    cptr data
    Py_ssize_t size
    int parts  # array/kvlist: how many messages merge into it


cdef int _scan_any(cptr p, cptr end, AnyCase* a) except -1:
    # Which member of the oneof is set, and its payload; the last one on the wire wins, and an
    # array or kvlist sent again under the same case merges with the one before.
    cdef Field f
    cdef uint64_t n
    a.case = 0
    a.parts = 0
    while _field(&p, end, &f):
        n = f.num
        if f.wt == 2:
            if n == 1 or n == 7:
                a.case = <int>n
                a.data = f.data
                a.size = f.size
            elif n == 5 or n == 6:
                if a.case != <int>n:
                    a.case = <int>n
                    a.parts = 0
                if a.parts == 0:
                    a.data = f.data
                    a.size = f.size
                a.parts += 1
        elif f.wt == 0:
            if n == 2 or n == 3 or n == 8:
                a.case = <int>n
                a.val = f.val
        elif f.wt == 1:
            if n == 4:
                a.case = 4
                a.val = f.val
    return 0


cdef inline bint _merged(AnyCase* a) noexcept:
    return (a.case == 5 or a.case == 6) and a.parts > 1


cdef inline object _double(uint64_t bits):
    # ``rows.double`` of the twin: a double JSON cannot hold is marked as such.
    cdef double d
    memcpy(&d, &bits, 8)
    if d - d == 0.0:
        return d
    return NonFinite(d)


cdef object _nested(AnyCase* a, int depth):
    # ``_pb_any`` for an array, a kvlist or bytes.
    cdef Field f
    cdef cptr p
    cdef cptr end
    cdef list items
    cdef dict kvs
    if depth >= MAX_DEPTH:
        return TOO_DEEP_TEXT
    if a.case == 7:
        return _bytes(a.data, a.size)  # kept as bytes: the row notes its type
    p = a.data
    end = p + a.size
    if a.case == 5:
        items = []
        while _field(&p, end, &f):
            if f.num == ARRAY_VALUES and f.wt == 2:
                items.append(_any(f.data, f.data + f.size, depth + 1))
        return items
    kvs = {}
    _into(kvs, p, end, KVLIST_VALUES, depth + 1)
    return kvs


cdef object _any(cptr p, cptr end, int depth):
    # ``pb_any(av, depth)`` of the twin, for one AnyValue.
    cdef AnyCase a
    _scan_any(p, end, &a)
    if _merged(&a):
        return _any_by_upb(_bytes(p, end - p), depth)
    if a.case == 1:
        return _limited(a.data, a.size, VALUE_LIMIT)
    if a.case == 3:
        return <int64_t>a.val
    if a.case == 2:
        return a.val != 0
    if a.case == 4:
        return _double(a.val)
    if a.case == 0:
        return None
    if a.case == 8:
        return TOO_DEEP_TEXT if depth >= MAX_DEPTH else None
    return _nested(&a, depth)


# What a KeyValue holds.
cdef enum:
    KV_ABSENT = 0  # no value, or an empty one: the twin skips the key
    KV_SIMPLE = 1  # one value, read into an AnyCase
    KV_MERGED = 2  # a value, or its array or kvlist, sent twice: protobuf merges the parts


cdef inline int _kv(cptr p, cptr end, cptr* key, Py_ssize_t* key_n, AnyCase* a) except -1:
    # (The hottest message of all: read field by field here, which costs less than ``_read``.)
    cdef Field f
    cdef cptr vp = NULL
    cdef Py_ssize_t vn = 0
    cdef int values = 0
    key[0] = <cptr>PyBytes_AS_STRING(_EMPTY)  # an absent key is the empty one
    key_n[0] = 0
    while _field(&p, end, &f):
        if f.wt == 2:
            if f.num == KV_KEY:
                key[0] = f.data
                key_n[0] = f.size
            elif f.num == KV_VALUE:
                vp = f.data
                vn = f.size
                values += 1
    if values == 0:
        return KV_ABSENT
    if values > 1:
        return KV_MERGED
    _scan_any(vp, vp + vn, a)
    if a.case == 0:
        return KV_ABSENT
    if _merged(a):
        return KV_MERGED
    return KV_SIMPLE


cdef inline str _value_text(AnyCase* a, str key):
    # A string value as ``pb_into`` of the twin keeps it (some keys allow longer ones).
    if _plain(a.data, a.size, VALUE_LIMIT):
        return _ascii(a.data, a.size)
    return sanitize_text(_str(a.data, a.size), LONG_VALUES.get(key, VALUE_CHARS))


cdef int _add_kv(dict out, cptr p, cptr end, int depth) except -1:
    # One KeyValue into ``out``, as the twin's ``pb_into`` puts it there.
    cdef cptr kp
    cdef Py_ssize_t kn
    cdef AnyCase a
    cdef int got = _kv(p, end, &kp, &kn, &a)
    if got == KV_ABSENT:
        return 0
    if got == KV_MERGED:
        return _kv_by_upb(out, p, end, depth)
    if _plain(kp, kn, KEY_LIMIT):
        key = _ascii(kp, kn)
    else:
        key = clean_key(_str(kp, kn))
    if a.case == 1:
        value = _value_text(&a, key)
    elif a.case == 3:
        value = <int64_t>a.val
    elif a.case == 2:
        value = a.val != 0
    elif a.case == 4:
        value = _double(a.val)
    elif a.case == 8:
        value = <int32_t><uint32_t>a.val
    else:
        value = _nested(&a, depth)
    out[key] = value
    return 0


cdef int _into(dict out, cptr p, cptr end, uint64_t num, int depth) except -1:
    # Every KeyValue of field ``num`` of one message into ``out``.
    cdef Field f
    while _field(&p, end, &f):
        if f.num == num and f.wt == 2:
            _add_kv(out, f.data, f.data + f.size, depth)
    return 0


cdef dict _attrs(dict extra, Slot* s, cptr p, cptr end, uint64_t num):
    # A record's attrs: the resource's other attributes, then the record's own (field ``num``,
    # read into ``s``) over them.
    cdef dict attrs = PyDict_Copy(extra) if extra else {}
    if s[num].count:
        _into(attrs, p, end, num, 0)
    return attrs


cdef object _resource(cptr p, cptr end):
    # The _Resource of a ResourceSpans / ResourceLogs (every resource field merged in order),
    # with the envelope's schema URL (the last one sent).
    cdef Field f
    cdef dict attrs = {}
    cdef cptr url = NULL
    cdef Py_ssize_t url_n = 0
    while _field(&p, end, &f):
        if f.num == ENVELOPE_RESOURCE and f.wt == 2:
            _into(attrs, f.data, f.data + f.size, RESOURCE_ATTRS, 0)
        elif f.num == ENVELOPE_SCHEMA_URL and f.wt == 2:
            url = f.data
            url_n = f.size
    return Resource(attrs, _str(url, url_n))


cdef Py_ssize_t _records_cap(object max_records) except? -1:
    if max_records > RECORDS_CAP:
        return RECORDS_CAP
    return max_records


# ---- attrs JSON written directly, for the common span ----------------------------------------
#
# orjson.dumps of the twin's attrs dict is '{' + the resource's extra attributes + the span's
# attributes in order + '}'. Written here from the wire when every key is plain and unique,
# text values need no escaping, and numbers are integers or booleans; any other value is
# serialised by orjson itself and spliced in, so the bytes come out the same. Anything rarer
# (a duplicate key, a location attribute, an odd key) takes the twin's dict path.

cdef object _FALLBACK = object()
cdef enum:
    MAX_KEYS = 128  # a span with more attributes takes the dict path

# Bytes a JSON string holds as they are, in any encoder: printable ASCII but '"' and '\\'.
cdef uint8_t _JSON_PLAIN[256]
for _i in range(256):
    _JSON_PLAIN[_i] = 0x20 <= _i < 0x7F and _i != 0x22 and _i != 0x5C


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef struct KeyRef:
    uint64_t hash
    cptr data
    Py_ssize_t size


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* data
    if b.size + extra <= b.cap:
        return 0
    cap = 2 * b.cap
    if cap < b.size + extra:
        cap = b.size + extra + 1024
    data = <char*>PyMem_Realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const void* data, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.size, data, n)
    b.size += n
    return 0


cdef inline int _put_byte(Buf* b, char c) except -1:
    if b.size + 1 > b.cap:
        _grow(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef int _put_int(Buf* b, int64_t v) except -1:
    cdef char digits[24]
    cdef int i = 24
    cdef uint64_t u = <uint64_t>v
    if v < 0:
        u = (~u) + 1
    while True:
        i -= 1
        digits[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        digits[i] = 45  # '-'
    return _put(b, digits + i, 24 - i)


cdef inline int _put_json(Buf* b, object value) except -1:
    # A value orjson serialises; raises what orjson raises.
    cdef bytes out = _dumps(value)
    return _put(b, PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out))


cdef inline int _put_key(Buf* b, cptr p, Py_ssize_t n, bint first) except -1:
    # '"key":', after a ',' unless it is the object's first member.
    if not first:
        _put_byte(b, 44)  # ','
    _put_byte(b, 34)  # '"'
    _put(b, p, n)
    return _put(b, b'":', 2)


cdef inline bint _json_plain(cptr p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    # Text that needs neither sanitising nor escaping: written between quotes as it is.
    cdef Py_ssize_t i
    if n > limit:
        return False
    for i in range(n):
        if not _JSON_PLAIN[p[i]]:
            return False
    return True


cdef inline uint64_t _hash(cptr p, Py_ssize_t n) noexcept nogil:
    # FNV-1a
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


cdef inline bint _among(
    KeyRef* refs, Py_ssize_t n, uint64_t h, cptr p, Py_ssize_t size
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if refs[i].hash == h and refs[i].size == size and memcmp(refs[i].data, p, size) == 0:
            return True
    return False


cdef inline bint _is(cptr p, Py_ssize_t n, bytes key) noexcept:
    return n == PyBytes_GET_SIZE(key) and memcmp(p, PyBytes_AS_STRING(key), n) == 0


cdef bytes _FILE_KEY_BYTES = FILE_KEY.encode()
cdef bytes _FILE_KEY_NEW_BYTES = FILE_KEY_NEW.encode()


# ---- the walk both requests share -----------------------------------------------------------

# Of each request: its message type, the type its records are, its full name, its repeated
# fields from resource to record (for messages about a record), and what its records are called.
cdef tuple _TRACES = (
    M_TRACES,
    M_SPAN,
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
    ("resource_spans", "scope_spans", "spans"),
    "spans",
)
cdef tuple _LOGS = (
    M_LOGS,
    M_LOG_RECORD,
    "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
    ("resource_logs", "scope_logs", "log_records"),
    "log records",
)


cdef bytes _as_bytes(object body, str type_name):
    # Any bytes-like body decodes as its bytes do; anything else is refused as upb refuses it.
    try:
        return bytes(memoryview(body))
    except TypeError:
        raise WireError(
            f"invalid protobuf {type_name.rpartition('.')[2]}: expected bytes, "
            f"{type(body).__name__} found"
        ) from None


cdef class _Walk:
    # A checked request's resources, their scopes and the scopes' items (spans or log records)
    # in order; a subclass reads what it needs of each resource, scope and item.
    cdef list out
    cdef object res  # the resource walked (a _Resource)
    cdef object max_records
    cdef Py_ssize_t budget  # rows beyond one per item (span events)
    cdef tuple names
    cdef Py_ssize_t i, j, k  # where the walk is: resource, scope, item
    cdef dict docs  # resource and scope documents by id, for the caller (or None)
    cdef object rid  # the resource_id of the scope walked
    cdef str scope_name

    cdef list decode(self, object body, object max_records, tuple request, dict docs):
        cdef int top, item
        cdef Py_ssize_t count
        cdef cptr p
        cdef cptr end
        cdef cptr q
        cdef cptr q_end
        cdef cptr r
        cdef cptr r_end
        cdef Field f
        cdef Field g
        cdef Field h
        top, item, type_name, self.names, noun = request
        if type(body) is not bytes:
            body = _as_bytes(body, type_name)
        count = _checked(body, top, item, type_name)
        if count > max_records:
            raise too_many(count, max_records, noun)
        p = <cptr>PyBytes_AS_STRING(body)
        end = p + PyBytes_GET_SIZE(body)
        self.out = []
        self.docs = docs
        self.max_records = max_records
        self.budget = _records_cap(max_records) - count
        self.i = 0
        while _field(&p, end, &f):
            if f.num != ENVELOPE_RESOURCES or f.wt != 2:
                continue
            q = f.data
            q_end = q + f.size
            self.res = _resource(q, q_end)
            self.resource()
            self.j = 0
            while _field(&q, q_end, &g):
                if g.num != ENVELOPE_SCOPES or g.wt != 2:
                    continue
                r = g.data
                r_end = r + g.size
                self.scope(r, r_end)
                self.k = 0
                while _field(&r, r_end, &h):
                    if h.num == ENVELOPE_ITEMS and h.wt == 2:
                        self.item(h.data, h.data + h.size)
                        self.k += 1
                self.j += 1
            self.i += 1
        return self.out

    cdef int resource(self) except -1:
        return 0

    cdef int scope(self, cptr p, cptr end) except -1:
        # The scope (its fields merged when sent twice: the last name and version, every
        # attribute) and the envelope's schema URL, as one resource_id with the resource.
        cdef Field f
        cdef Slot s[SCOPE_SLOTS]
        cdef cptr name = NULL
        cdef Py_ssize_t name_n = 0
        cdef cptr version = NULL
        cdef Py_ssize_t version_n = 0
        cdef cptr url = NULL
        cdef Py_ssize_t url_n = 0
        cdef dict attrs = {}
        while _field(&p, end, &f):
            if f.num == ENVELOPE_SCOPE and f.wt == 2:
                _read(f.data, f.data + f.size, M_SCOPE, SCOPE_SLOTS, s)
                if s[SCOPE_NAME].count:
                    name = s[SCOPE_NAME].data
                    name_n = s[SCOPE_NAME].size
                if s[SCOPE_VERSION].count:
                    version = s[SCOPE_VERSION].data
                    version_n = s[SCOPE_VERSION].size
                if s[SCOPE_ATTRS].count:
                    _into(attrs, f.data, f.data + f.size, SCOPE_ATTRS, 0)
            elif f.num == ENVELOPE_SCHEMA_URL and f.wt == 2:
                url = f.data
                url_n = f.size
        self.scope_name = _str(name, name_n)
        self.rid = origin(
            self.res, self.scope_name, _str(version, version_n), attrs, _str(url, url_n), self.docs
        )
        return 0

    cdef int item(self, cptr p, cptr end) except -1:
        return 0

    cdef str where(self):
        names = self.names
        return f"{names[0]}[{self.i}].{names[1]}[{self.j}].{names[2]}[{self.k}]"

    @cython.final
    cdef inline int check_id(self, Slot* s, Py_ssize_t size, bint required, str field) except -1:
        # An id of ``size`` bytes. Only an optional one may be absent (or all zero: no id).
        if s.size != size:
            if s.size == 0 and not required:
                return 0
            raise WireError(f"{self.where()}.{field}: expected {size} bytes, got {s.size}")
        if required and _zero(s.data, size):
            raise WireError(f"{self.where()}.{field}: all zero (not a valid id)")
        return 0

    @cython.final
    cdef inline object span_id(self, Slot* s, bint required, str field):
        # A span id as the signed integer atrace stores (None: an optional one absent or zero).
        self.check_id(s, 8, required, field)
        return ((<int64_t>_be64(s.data)) or None) if s.size else None


# ---- traces ---------------------------------------------------------------------------------


cdef class _Traces(_Walk):
    cdef bint have_last
    cdef uint8_t last[16]
    cdef str trace_id
    cdef dict extra
    cdef object service, environment, host, pid
    # The resource's part of every span's attrs JSON, and its keys (a span key among them
    # takes the dict path, since the dict would keep the first place and the last value).
    cdef bint direct
    cdef bytes extra_json
    cdef list extra_keys
    cdef KeyRef* extra_refs  # an open-addressing table (a resource may have many attributes)
    cdef uint64_t extra_mask
    cdef Buf buf

    def __dealloc__(self):
        PyMem_Free(self.extra_refs)
        PyMem_Free(self.buf.data)

    cdef inline bint in_extra(self, uint64_t h, cptr p, Py_ssize_t n) noexcept:
        cdef uint64_t i
        cdef KeyRef* ref
        if self.extra_refs == NULL:
            return False
        i = h & self.extra_mask
        while True:
            ref = &self.extra_refs[i]
            if ref.data == NULL:
                return False
            if ref.hash == h and ref.size == n and memcmp(ref.data, p, n) == 0:
                return True
            i = (i + 1) & self.extra_mask

    cdef int resource(self) except -1:
        res = self.res
        self.extra = None  # a resource's attributes are its own, not the records' (origin)
        self.service = res.service
        self.environment = res.environment
        self.host = res.host
        self.pid = res.pid
        return self.set_extra(self.extra)

    cdef int set_extra(self, dict extra) except -1:
        cdef uint64_t size = 8, h, i
        cdef bytes key
        cdef KeyRef* refs
        self.direct = True
        self.extra_json = None
        self.extra_keys = None
        PyMem_Free(self.extra_refs)
        self.extra_refs = NULL
        if extra is None:
            return 0
        if FILE_KEY in extra or FILE_KEY_NEW in extra:
            self.direct = False  # every span's location comes out of its attrs
            return 0
        try:
            self.extra_json = _dumps(extra)
        except Exception:
            self.direct = False
            return 0
        self.extra_keys = [k.encode("utf-8") for k in extra]
        while size < 2 * <uint64_t>len(self.extra_keys):
            size *= 2
        refs = <KeyRef*>PyMem_Malloc(size * sizeof(KeyRef))
        if refs == NULL:
            raise MemoryError()
        memset(refs, 0, size * sizeof(KeyRef))
        self.extra_refs = refs
        self.extra_mask = size - 1
        for key in self.extra_keys:
            h = _hash(<cptr>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            i = h & self.extra_mask
            while refs[i].data != NULL:
                i = (i + 1) & self.extra_mask
            refs[i].data = <cptr>PyBytes_AS_STRING(key)
            refs[i].size = PyBytes_GET_SIZE(key)
            refs[i].hash = h
        return 0

    cdef object attrs_json(self, cptr p, cptr end):
        # The span's attrs as the twin's orjson.dumps(attrs) gives them, or _FALLBACK.
        cdef Buf* b = &self.buf
        cdef KeyRef keys[MAX_KEYS]
        cdef Py_ssize_t n_keys = 0, kn
        cdef Field f
        cdef cptr kp
        cdef uint64_t h
        cdef AnyCase a
        cdef int got
        cdef bint empty = True
        if not self.direct:
            return _FALLBACK
        b.size = 0
        _put_byte(b, 123)  # '{'
        if self.extra_json is not None:
            _put(b, PyBytes_AS_STRING(self.extra_json) + 1, PyBytes_GET_SIZE(self.extra_json) - 2)
            empty = False
        while _field(&p, end, &f):
            if f.num != SPAN_ATTRS or f.wt != 2:
                continue
            got = _kv(f.data, f.data + f.size, &kp, &kn, &a)
            if got == KV_ABSENT:
                continue
            if got == KV_MERGED or n_keys == MAX_KEYS or not _json_plain(kp, kn, KEY_LIMIT):
                return _FALLBACK
            h = _hash(kp, kn)
            if (
                _among(keys, n_keys, h, kp, kn)
                or self.in_extra(h, kp, kn)
                or _is(kp, kn, _FILE_KEY_BYTES)
                or _is(kp, kn, _FILE_KEY_NEW_BYTES)
            ):
                return _FALLBACK
            keys[n_keys].hash = h
            keys[n_keys].data = kp
            keys[n_keys].size = kn
            n_keys += 1
            _put_key(b, kp, kn, empty)
            empty = False
            if a.case == 1:
                if _json_plain(a.data, a.size, VALUE_LIMIT):
                    _put_byte(b, 34)
                    _put(b, a.data, a.size)
                    _put_byte(b, 34)
                else:
                    _put_json(b, _value_text(&a, _ascii(kp, kn)))
            elif a.case == 3:
                _put_int(b, <int64_t>a.val)
            elif a.case == 2:
                if a.val:
                    _put(b, b"true", 4)
                else:
                    _put(b, b"false", 5)
            elif a.case == 8:
                _put_int(b, <int32_t><uint32_t>a.val)
            else:
                try:
                    _put_json(b, _double(a.val) if a.case == 4 else _nested(&a, 0))
                except Exception:
                    return _FALLBACK  # (orjson refuses nothing decoded here; the dict path decides)
        if empty:
            return None
        _put_byte(b, 125)  # '}'
        return PyBytes_FromStringAndSize(b.data, b.size)

    cdef int item(self, cptr p, cptr end) except -1:
        # One span.
        cdef Slot s[SPAN_SLOTS]
        cdef Slot* tid = &s[SPAN_TRACE_ID]
        cdef Slot* status = &s[SPAN_STATUS]
        cdef Slot* state = &s[SPAN_TRACE_STATE]
        cdef Field f
        cdef cptr q
        cdef cptr msg_p = NULL
        cdef Py_ssize_t msg_n = 0, n_events, n_links
        cdef int32_t kind, code = 0
        cdef uint32_t flags
        cdef uint64_t start, stop
        cdef dict attrs
        cdef list events
        _read(p, end, M_SPAN, SPAN_SLOTS, s)
        kind = <int32_t><uint32_t>s[SPAN_KIND].val
        flags = <uint32_t>s[SPAN_FLAGS].val
        start = s[SPAN_START].val
        stop = s[SPAN_END].val
        n_events = s[SPAN_EVENTS].count
        n_links = s[SPAN_LINKS].count
        if status.count == 1:
            _status(status.data, status.size, &code, &msg_p, &msg_n)
        elif status.count:
            q = p
            while _field(&q, end, &f):
                if f.num == SPAN_STATUS and f.wt == 2:
                    _status(f.data, f.size, &code, &msg_p, &msg_n)
        if not (self.have_last and tid.size == 16 and memcmp(tid.data, self.last, 16) == 0):
            # Spans of one trace travel together: their hex text is made once, shared.
            self.check_id(tid, 16, True, "trace_id")
            memcpy(self.last, tid.data, 16)
            self.have_last = True
            self.trace_id = _hex(tid.data, 16)
        span_id = self.span_id(&s[SPAN_SPAN_ID], True, "span_id")
        parent_id = self.span_id(&s[SPAN_PARENT_ID], False, "parent_span_id")
        if not start:
            raise WireError(f"{self.where()}.start_time_unix_nano: missing")
        fast = not (n_events or n_links or code == STATUS_ERROR)
        if fast:
            # The common span, no events, links or failure: its row is built right here,
            # unless a value needs its type kept (bytes, a double JSON cannot hold).
            location = None
            attrs_json = self.attrs_json(p, end)
            if attrs_json is _FALLBACK:
                attrs = _attrs(self.extra, s, p, end, SPAN_ATTRS)
                try:
                    attrs_json = _dumps(attrs) if attrs else None
                except TypeError:
                    fast = False
                else:
                    if FILE_KEY in attrs or FILE_KEY_NEW in attrs:
                        location = pop_location(attrs)
                        attrs_json = _dumps(attrs) if attrs else None
        if fast:
            self.out.append(
                (
                    start,
                    3,
                    20,
                    self.trace_id,
                    span_id,
                    parent_id,
                    stop - start if stop > start else 0,
                    1 if code == 1 else 0,
                    self.service,
                    self.environment,
                    self.host,
                    self.pid,
                    _limited(s[SPAN_NAME].data, s[SPAN_NAME].size, NAME_LIMIT) or None,
                    None,
                    attrs_json,
                    None,
                    None,
                    None,
                    location,
                    kind if 0 <= kind <= KIND_LAST else 0,
                    _limited(state.data, state.size, TRACE_STATE_LIMIT) or None,
                    (flags & W3C_FLAGS) if flags else None,
                    _limited(msg_p, msg_n, MESSAGE_LIMIT) or None,
                    None,
                    flags_doc(flags),
                    self.rid,
                )
            )
            return 0
        attrs = _attrs(self.extra, s, p, end, SPAN_ATTRS)
        self.budget -= n_events
        if self.budget < 0:
            raise too_many(
                self.max_records - self.budget, self.max_records, "spans and events"
            )
        events = []
        links = [] if n_links else None
        q = p
        while _field(&q, end, &f):
            if f.num == SPAN_EVENTS and f.wt == 2:
                events.append(_event(f.data, f.data + f.size))
            elif f.num == SPAN_LINKS and f.wt == 2:
                links.append(self.link(f.data, f.data + f.size, len(links)))
        span_rows(
            self.out,
            self.res,
            self.trace_id,
            span_id,
            parent_id,
            _str(s[SPAN_NAME].data, s[SPAN_NAME].size),
            kind,
            start,
            stop,
            code,
            _str(msg_p, msg_n),
            _str(state.data, state.size),
            flags,
            attrs,
            events,
            links,
            self.rid,
        )
        return 0

    cdef object link(self, cptr p, cptr end, Py_ssize_t n):
        # ``_links`` of the twin, for one link: ids of the wrong size refused, zero ones kept.
        cdef Slot s[LINK_SLOTS]
        _read(p, end, M_LINK, LINK_SLOTS, s)
        if s[LINK_TRACE_ID].size != 16:
            raise WireError(
                f"{self.where()}.links[{n}].trace_id: expected 16 bytes, "
                f"got {s[LINK_TRACE_ID].size}"
            )
        if s[LINK_SPAN_ID].size != 8:
            raise WireError(
                f"{self.where()}.links[{n}].span_id: expected 8 bytes, got {s[LINK_SPAN_ID].size}"
            )
        attrs = _attrs(None, s, p, end, LINK_ATTRS)
        return Link(
            _bytes(s[LINK_TRACE_ID].data, 16),
            _bytes(s[LINK_SPAN_ID].data, 8),
            _str(s[LINK_TRACE_STATE].data, s[LINK_TRACE_STATE].size),
            <uint32_t>s[LINK_FLAGS].val,
            attrs,
        )


cdef int _status(cptr p, Py_ssize_t n, int32_t* code, cptr* msg, Py_ssize_t* msg_n) except -1:
    # A Status sent twice merges: each field keeps the last value it was given.
    cdef Slot s[STATUS_SLOTS]
    _read(p, p + n, M_STATUS, STATUS_SLOTS, s)
    if s[STATUS_MESSAGE].count:
        msg[0] = s[STATUS_MESSAGE].data
        msg_n[0] = s[STATUS_MESSAGE].size
    if s[STATUS_CODE].count:
        code[0] = <int32_t><uint32_t>s[STATUS_CODE].val
    return 0


cdef object _event(cptr p, cptr end):
    cdef Slot s[EVENT_SLOTS]
    _read(p, end, M_EVENT, EVENT_SLOTS, s)
    attrs = _attrs(None, s, p, end, EVENT_ATTRS)
    return Event(s[EVENT_TIME].val, _str(s[EVENT_NAME].data, s[EVENT_NAME].size), attrs)


def decode_traces_pb(body, max_records, resources=None):
    """Rows for a protobuf ``ExportTraceServiceRequest``, as the twin makes them."""
    cdef _Traces walk = _Traces.__new__(_Traces)
    return walk.decode(body, max_records, _TRACES, resources)


# ---- logs -----------------------------------------------------------------------------------


cdef object _body(cptr p, Py_ssize_t n, list parts):
    # ``pb_body`` of the twin: a string as sent, anything else as ``_any`` reads it.
    cdef AnyCase a
    cdef cptr end
    if parts is not None:
        return pb_body(AnyValue.FromString(b"".join(parts)))
    if p == NULL:
        return None
    end = p + n
    _scan_any(p, end, &a)
    if _merged(&a):
        return pb_body(AnyValue.FromString(_bytes(p, n)))
    if a.case == 0:
        return None
    if a.case == 1:
        return _str(a.data, a.size)
    return _any(p, end, 0)


cdef class _Logs(_Walk):
    cdef int item(self, cptr p, cptr end) except -1:
        # One log record.
        cdef Slot s[LOG_SLOTS]
        cdef Slot* tid = &s[LOG_TRACE_ID]
        cdef Slot* body = &s[LOG_BODY]
        cdef Field f
        cdef cptr q
        cdef list parts = None
        _read(p, end, M_LOG_RECORD, LOG_SLOTS, s)
        self.check_id(tid, 16, False, "trace_id")
        trace_id = None if tid.size == 0 or _zero(tid.data, 16) else _hex(tid.data, 16)
        span_id = self.span_id(&s[LOG_SPAN_ID], False, "span_id")
        attrs = _attrs(self.res.extra, s, p, end, LOG_ATTRS)
        if body.count > 1:
            # A body sent twice merges: the official class does that from all its parts.
            parts = []
            q = p
            while _field(&q, end, &f):
                if f.num == LOG_BODY and f.wt == 2:
                    parts.append(_bytes(f.data, f.size))
        self.out.append(
            log_row(
                self.res,
                self.scope_name,
                s[LOG_TIME].val,
                s[LOG_OBSERVED].val,
                <int32_t><uint32_t>s[LOG_SEVERITY].val,
                _str(s[LOG_SEVERITY_TEXT].data, s[LOG_SEVERITY_TEXT].size),
                _body(body.data, body.size, parts),
                attrs,
                trace_id,
                span_id,
                _str(s[LOG_EVENT_NAME].data, s[LOG_EVENT_NAME].size),
                <uint32_t>s[LOG_FLAGS].val,
                self.rid,
            )
        )
        return 0


def decode_logs_pb(body, max_records, resources=None):
    """Rows for a protobuf ``ExportLogsServiceRequest``, as the twin makes them."""
    cdef _Logs walk = _Logs.__new__(_Logs)
    return walk.decode(body, max_records, _LOGS, resources)
