# cython: language_level=3, boundscheck=False, wraparound=False
"""OTLP protobuf requests as atrace rows, read straight off the wire (compiled; the twin is the
upb path of ``_otlp_decode``).

A body is read twice. The first pass checks it as upb's parser does (every length against its
message, tags and varints, UTF-8 of string fields, nesting depth, unknown fields of every wire
type) and counts the records, so a bad body is refused with the twin's message before any row
exists. The second pass builds the rows from the checked bytes without message objects. Values
the protobuf rules merge (a KeyValue's value or an AnyValue's array sent twice) are rare enough
to go through the official classes and the twin's helpers, which keeps them identical.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_DecodeUTF8, PyUnicode_New
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

import binascii

import orjson

from ._otlp_common import _FILE_KEYS, _KIND_KEY, _KIND_NAMES, _MAX_DEPTH, _STATUS_ERROR
from ._otlp_rows import (
    _KEY_LIMIT,
    _LONG_VALUES,
    _MESSAGE_LIMIT,
    _NAME_LIMIT,
    _VALUE_LIMIT,
    _attrs_json,
    _Event,
    _key,
    _log_row,
    _pop_location,
    _Resource,
    _span_rows,
    _text,
    _too_many,
)
from .encode import sanitize_text
from .errors import WireError

__all__ = ("decode_logs_pb", "decode_traces_pb")

ctypedef const uint8_t* cptr

cdef Py_ssize_t KEY_LIMIT = _KEY_LIMIT
cdef Py_ssize_t VALUE_LIMIT = _VALUE_LIMIT
cdef Py_ssize_t NAME_LIMIT = _NAME_LIMIT
cdef Py_ssize_t MESSAGE_LIMIT = _MESSAGE_LIMIT
cdef int MAX_DEPTH = _MAX_DEPTH
cdef int32_t STATUS_ERROR = _STATUS_ERROR
cdef object FILE_KEY, FILE_KEY_NEW
FILE_KEY, FILE_KEY_NEW = _FILE_KEYS
cdef object _dumps = orjson.dumps
cdef object _b2a = binascii.b2a_base64
cdef str TOO_DEEP_TEXT = "<too deep>"
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

# What a length-delimited field holds.
cdef enum:
    F_OTHER = 0  # bytes, or a field this schema does not know: only its length matters
    F_STRING = 1  # UTF-8 checked
    F_MESSAGE = 2  # parsed (and checked) as the message type given alongside


cdef int _delimited(int m, uint64_t n, int* sub) noexcept nogil:
    # The length-delimited fields of the OTLP protos (opentelemetry-proto 1.x field numbers).
    if m == M_KEY_VALUE:
        if n == 1:
            return F_STRING
        if n == 2:
            sub[0] = M_ANY
            return F_MESSAGE
    elif m == M_ANY:
        if n == 1:
            return F_STRING
        if n == 5:
            sub[0] = M_ARRAY
            return F_MESSAGE
        if n == 6:
            sub[0] = M_KVLIST
            return F_MESSAGE
    elif m == M_SPAN:
        if n == 3 or n == 5:
            return F_STRING
        if n == 9:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
        if n == 11:
            sub[0] = M_EVENT
            return F_MESSAGE
        if n == 13:
            sub[0] = M_LINK
            return F_MESSAGE
        if n == 15:
            sub[0] = M_STATUS
            return F_MESSAGE
    elif m == M_ARRAY:
        if n == 1:
            sub[0] = M_ANY
            return F_MESSAGE
    elif m == M_KVLIST:
        if n == 1:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
    elif m == M_TRACES:
        if n == 1:
            sub[0] = M_RESOURCE_SPANS
            return F_MESSAGE
    elif m == M_RESOURCE_SPANS:
        if n == 1:
            sub[0] = M_RESOURCE
            return F_MESSAGE
        if n == 2:
            sub[0] = M_SCOPE_SPANS
            return F_MESSAGE
        if n == 3:
            return F_STRING
    elif m == M_SCOPE_SPANS:
        if n == 1:
            sub[0] = M_SCOPE
            return F_MESSAGE
        if n == 2:
            sub[0] = M_SPAN
            return F_MESSAGE
        if n == 3:
            return F_STRING
    elif m == M_EVENT:
        if n == 2:
            return F_STRING
        if n == 3:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
    elif m == M_LINK:
        if n == 3:
            return F_STRING
        if n == 4:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
    elif m == M_STATUS:
        if n == 2:
            return F_STRING
    elif m == M_RESOURCE:
        if n == 1:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
        if n == 3:
            sub[0] = M_ENTITY_REF
            return F_MESSAGE
    elif m == M_SCOPE:
        if n == 1 or n == 2:
            return F_STRING
        if n == 3:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
    elif m == M_ENTITY_REF:
        if 1 <= n <= 4:
            return F_STRING
    elif m == M_LOGS:
        if n == 1:
            sub[0] = M_RESOURCE_LOGS
            return F_MESSAGE
    elif m == M_RESOURCE_LOGS:
        if n == 1:
            sub[0] = M_RESOURCE
            return F_MESSAGE
        if n == 2:
            sub[0] = M_SCOPE_LOGS
            return F_MESSAGE
        if n == 3:
            return F_STRING
    elif m == M_SCOPE_LOGS:
        if n == 1:
            sub[0] = M_SCOPE
            return F_MESSAGE
        if n == 2:
            sub[0] = M_LOG_RECORD
            return F_MESSAGE
        if n == 3:
            return F_STRING
    elif m == M_LOG_RECORD:
        if n == 3 or n == 12:
            return F_STRING
        if n == 5:
            sub[0] = M_ANY
            return F_MESSAGE
        if n == 6:
            sub[0] = M_KEY_VALUE
            return F_MESSAGE
    return F_OTHER


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
    cdef uint64_t i = 0
    cdef uint64_t word
    cdef uint8_t c, c1
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
        if c < 0xC2:
            return False
        if c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if c < 0xF0:
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if c == 0xE0:
                if c1 < 0xA0 or c1 > 0xBF:
                    return False
            elif c == 0xED:
                if c1 < 0x80 or c1 > 0x9F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (p[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
            continue
        if c < 0xF5:
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if c == 0xF0:
                if c1 < 0x90 or c1 > 0xBF:
                    return False
            elif c == 0xF4:
                if c1 < 0x80 or c1 > 0x8F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                return False
            i += 4
            continue
        return False
    return True


# ---- the check: upb's verdict on a body, and its record count --------------------------------


cdef struct Check:
    int status
    cptr end  # of the body
    int counted  # the message type whose occurrences are counted (spans or log records)
    Py_ssize_t count


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
            c.status = CORRUPT
            return NULL
        n = tag >> 3
        wt = <int>(tag & 7)
        if wt == 4:
            if n == group and p <= end:
                return p
            c.status = CORRUPT  # an end-group tag that closes nothing open
            return NULL
        if n == 0 and m != M_UNKNOWN:
            c.status = CORRUPT  # (upb skips a group without looking at its field numbers)
            return NULL
        if wt == 0:
            p = _varint(p, stop, &size)
            if p == NULL:
                c.status = CORRUPT
                return NULL
        elif wt == 1:
            if stop - p < 8:
                c.status = CORRUPT
                return NULL
            p += 8
        elif wt == 5:
            if stop - p < 4:
                c.status = CORRUPT
                return NULL
            p += 4
        elif wt == 2:
            p = _varint(p, stop, &size)
            if p == NULL or size >= MAX_SIZE or size > <uint64_t>(stop - p):
                c.status = CORRUPT
                return NULL
            kind = _delimited(m, n, &sub)
            if kind == F_STRING:
                # Checked before upb sees that the string overran its message.
                if not _utf8(p, size):
                    c.status = BAD_UTF8
                    return NULL
            if p > end or size > <uint64_t>(end - p):
                c.status = CORRUPT
                return NULL
            if kind == F_MESSAGE:
                if depth == 0:
                    c.status = TOO_DEEP
                    return NULL
                if sub == c.counted:
                    c.count += 1
                if _check(c, p, p + size, sub, depth - 1, NO_GROUP) == NULL:
                    return NULL
            p += size
        elif wt == 3:
            # No field of these protos is a group: every group is unknown, skipped whole, and
            # upb's skipping reports nesting beyond its limit as a corrupt body.
            if p >= end or depth == 0:
                c.status = CORRUPT
                return NULL
            p = _check(c, p, end, M_UNKNOWN, depth - 1, n)
            if p == NULL:
                return NULL
        else:
            c.status = CORRUPT
            return NULL
        if p > end:
            c.status = CORRUPT  # the field ran past the end of its message
            return NULL
    if group != NO_GROUP:
        c.status = CORRUPT  # the group's end tag never came
        return NULL
    return p


cdef Py_ssize_t _checked(bytes body, int top, int counted, str what, str type_name) except -1:
    cdef Check c
    cdef cptr p = <cptr>PyBytes_AS_STRING(body)
    c.status = OK
    c.end = p + PyBytes_GET_SIZE(body)
    c.counted = counted
    c.count = 0
    _check(&c, p, c.end, top, UPB_DEPTH, NO_GROUP)
    if c.status != OK:
        raise WireError(
            f"invalid protobuf {what}: Error parsing message with type '{type_name}': "
            f"{_REASONS[c.status]}"
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


cdef int _corrupt() except -1:
    raise _broken()


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
    return _text(_str(p, n), limit)


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


# ---- the twin, for the rare values that protobuf merges ---------------------------------------

cdef object _twin = None
cdef object _KeyValue = None
cdef object _AnyValue = None


cdef object _twin_module():
    # Imported on first use: the twin module imports this one when it loads.
    global _twin, _KeyValue, _AnyValue
    if _twin is None:
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

        from . import _otlp_decode

        _KeyValue, _AnyValue, _twin = KeyValue, AnyValue, _otlp_decode
    return _twin


cdef int _kv_by_twin(dict out, cptr p, cptr end, int depth) except -1:
    twin = _twin_module()
    twin._pb_into(out, [_KeyValue.FromString(_bytes(p, end - p))], depth)
    return 0


cdef object _any_by_twin(bytes raw, int depth):
    twin = _twin_module()
    return twin._pb_any(_AnyValue.FromString(raw), depth)


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
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            return _corrupt()
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
    cdef double d
    memcpy(&d, &bits, 8)
    return d


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
        return _b2a(_bytes(a.data, a.size), newline=False).decode("ascii")
    p = a.data
    end = p + a.size
    if a.case == 5:
        items = []
        while p < end:
            p = _next(p, end, &f)
            if p == NULL:
                raise _broken()
            if f.num == 1 and f.wt == 2:
                items.append(_any(f.data, f.data + f.size, depth + 1))
        return items
    kvs = {}
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            raise _broken()
        if f.num == 1 and f.wt == 2:
            _add_kv(kvs, f.data, f.data + f.size, depth + 1)
    return kvs


cdef object _any(cptr p, cptr end, int depth):
    # ``_pb_any(av, depth)`` of the twin, for one AnyValue.
    cdef AnyCase a
    _scan_any(p, end, &a)
    if _merged(&a):
        return _any_by_twin(_bytes(p, end - p), depth)
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


cdef int _add_kv(dict out, cptr p, cptr end, int depth) except -1:
    # One KeyValue into ``out``, as the twin's ``_pb_into`` puts it there.
    cdef Field f
    cdef cptr q = p
    cdef cptr kp = NULL
    cdef cptr vp = NULL
    cdef Py_ssize_t kn = 0, vn = 0
    cdef int values = 0
    cdef AnyCase a
    while q < end:
        q = _next(q, end, &f)
        if q == NULL:
            return _corrupt()
        if f.wt == 2:
            if f.num == 1:
                kp = f.data
                kn = f.size
            elif f.num == 2:
                vp = f.data
                vn = f.size
                values += 1
    if values == 0:
        return 0  # no value: the twin skips the key
    if values > 1:
        return _kv_by_twin(out, p, end, depth)
    _scan_any(vp, vp + vn, &a)
    if a.case == 0:
        return 0
    if _merged(&a):
        return _kv_by_twin(out, p, end, depth)
    if _plain(kp, kn, KEY_LIMIT):
        key = _ascii(kp, kn)
    else:
        key = _key(_str(kp, kn))
    if a.case == 1:
        if _plain(a.data, a.size, VALUE_LIMIT):
            value = _ascii(a.data, a.size)
        else:
            value = sanitize_text(_str(a.data, a.size), _LONG_VALUES.get(key, _VALUE_LIMIT))
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


cdef int _into(dict out, cptr p, cptr end, uint64_t num) except -1:
    # Every KeyValue of field ``num`` of one message into ``out``.
    cdef Field f
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            return _corrupt()
        if f.num == num and f.wt == 2:
            _add_kv(out, f.data, f.data + f.size, 0)
    return 0


cdef object _resource(cptr p, cptr end):
    # The _Resource of a ResourceSpans / ResourceLogs (every resource field merged in order).
    cdef Field f
    cdef dict attrs = {}
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            raise _broken()
        if f.num == 1 and f.wt == 2:
            _into(attrs, f.data, f.data + f.size, 1)
    return _Resource(attrs)


cdef object _dumps_attrs(dict attrs):
    if not attrs:
        return None
    try:
        return _dumps(attrs)
    except Exception:
        return _attrs_json(attrs)


cdef Py_ssize_t _records_cap(object max_records) except? -1:
    if max_records > RECORDS_CAP:
        return RECORDS_CAP
    return max_records


# ---- attrs JSON written directly, for the common span ----------------------------------------
#
# orjson.dumps of the twin's attrs dict is '{' + the resource's extra attributes + the span's
# attributes in order + span.kind + '}'. Written here from the wire when every key is plain
# and unique, text values need no escaping, and numbers are integers or booleans; any other
# value is serialised by orjson itself and spliced in, so the bytes come out the same. Anything
# rarer (a duplicate key, a location attribute, an odd key) takes the twin's dict path.

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


cdef bytes _EMPTY = b""
cdef bytes _SPAN_KIND_KEY = _KIND_KEY.encode()
cdef bytes _FILE_KEY_BYTES = FILE_KEY.encode()
cdef bytes _FILE_KEY_NEW_BYTES = FILE_KEY_NEW.encode()
cdef uint64_t _SPAN_KIND_HASH = _hash(<cptr>PyBytes_AS_STRING(_SPAN_KIND_KEY), len(_SPAN_KIND_KEY))


# ---- traces ---------------------------------------------------------------------------------


cdef class _Traces:
    cdef list out
    cdef Py_ssize_t budget  # rows beyond one per span: span events
    cdef object max_records
    cdef bint have_last
    cdef uint8_t last[16]
    cdef str trace_id
    cdef object res
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

    cdef int resource_spans(self, cptr p, cptr end, Py_ssize_t i) except -1:
        cdef Field f
        cdef cptr q = p
        cdef Py_ssize_t j = 0
        res = _resource(p, end)
        self.res = res
        self.extra = res.extra or None
        self.service = res.service
        self.environment = res.environment
        self.host = res.host
        self.pid = res.pid
        self.set_extra(self.extra)
        while q < end:
            q = _next(q, end, &f)
            if q == NULL:
                return _corrupt()
            if f.num == 2 and f.wt == 2:
                self.scope_spans(f.data, f.data + f.size, i, j)
                j += 1
        return 0

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

    cdef object attrs_json(self, cptr p, cptr end, int32_t kind):
        # The span's attrs as the twin's orjson.dumps(attrs) gives them, or _FALLBACK.
        cdef Buf* b = &self.buf
        cdef KeyRef keys[MAX_KEYS]
        cdef Py_ssize_t n_keys = 0, kn, vn
        cdef Field f
        cdef Field g
        cdef cptr q
        cdef cptr kp
        cdef cptr vp
        cdef int values
        cdef uint64_t h
        cdef AnyCase a
        cdef bint empty = True
        if not self.direct:
            return _FALLBACK
        b.size = 0
        _put_byte(b, 123)  # '{'
        if self.extra_json is not None:
            _put(b, PyBytes_AS_STRING(self.extra_json) + 1, PyBytes_GET_SIZE(self.extra_json) - 2)
            empty = False
        while p < end:
            p = _next(p, end, &f)
            if p == NULL:
                raise _broken()
            if f.num != 9 or f.wt != 2:
                continue
            q = f.data
            kp = <cptr>PyBytes_AS_STRING(_EMPTY)  # an absent key is the empty one
            vp = NULL
            kn = vn = 0
            values = 0
            while q < f.data + f.size:
                q = _next(q, f.data + f.size, &g)
                if q == NULL:
                    raise _broken()
                if g.wt == 2:
                    if g.num == 1:
                        kp = g.data
                        kn = g.size
                    elif g.num == 2:
                        vp = g.data
                        vn = g.size
                        values += 1
            if values == 0:
                continue
            if values > 1:
                return _FALLBACK
            _scan_any(vp, vp + vn, &a)
            if a.case == 0:
                continue
            if _merged(&a) or n_keys == MAX_KEYS or not _json_plain(kp, kn, KEY_LIMIT):
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
            if not empty:
                _put_byte(b, 44)  # ','
            empty = False
            _put_byte(b, 34)  # '"'
            _put(b, kp, kn)
            _put(b, b'":', 2)
            if a.case == 1:
                if _json_plain(a.data, a.size, VALUE_LIMIT):
                    _put_byte(b, 34)
                    _put(b, a.data, a.size)
                    _put_byte(b, 34)
                else:
                    if _plain(a.data, a.size, VALUE_LIMIT):
                        value = _ascii(a.data, a.size)
                    else:
                        value = sanitize_text(
                            _str(a.data, a.size), _LONG_VALUES.get(_ascii(kp, kn), _VALUE_LIMIT)
                        )
                    _put_json(b, value)
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
        if kind > 1:
            kp = <cptr>PyBytes_AS_STRING(_SPAN_KIND_KEY)
            kn = PyBytes_GET_SIZE(_SPAN_KIND_KEY)
            if _among(keys, n_keys, _SPAN_KIND_HASH, kp, kn) or self.in_extra(
                _SPAN_KIND_HASH, kp, kn
            ):
                return _FALLBACK
            if not empty:
                _put_byte(b, 44)
            empty = False
            _put_byte(b, 34)
            _put(b, kp, kn)
            _put(b, b'":', 2)
            name = _KIND_NAMES.get(kind)
            if name is None:
                _put_int(b, kind)
            else:
                _put_json(b, name)
        if empty:
            return None
        _put_byte(b, 125)  # '}'
        return PyBytes_FromStringAndSize(b.data, b.size)

    cdef int scope_spans(self, cptr p, cptr end, Py_ssize_t i, Py_ssize_t j) except -1:
        cdef Field f
        cdef Py_ssize_t k = 0
        while p < end:
            p = _next(p, end, &f)
            if p == NULL:
                return _corrupt()
            if f.num == 2 and f.wt == 2:
                self.span(f.data, f.data + f.size, i, j, k)
                k += 1
        return 0

    cdef int span(self, cptr p, cptr end, Py_ssize_t i, Py_ssize_t j, Py_ssize_t k) except -1:
        cdef Field f
        cdef cptr q = p
        cdef cptr tid = NULL
        cdef cptr sid = NULL
        cdef cptr pid_p = NULL
        cdef cptr name_p = NULL
        cdef cptr msg_p = NULL
        cdef Py_ssize_t tid_n = 0, sid_n = 0, pid_n = 0, name_n = 0, msg_n = 0
        cdef int32_t kind = 0, code = 0
        cdef uint64_t start = 0, stop = 0, n
        cdef Py_ssize_t n_events = 0
        cdef bint has_attrs = False
        cdef dict attrs
        cdef list events
        while q < end:
            q = _next(q, end, &f)
            if q == NULL:
                return _corrupt()
            n = f.num
            if f.wt == 2:
                if n == 9:
                    has_attrs = True
                elif n == 1:
                    tid = f.data
                    tid_n = f.size
                elif n == 2:
                    sid = f.data
                    sid_n = f.size
                elif n == 4:
                    pid_p = f.data
                    pid_n = f.size
                elif n == 5:
                    name_p = f.data
                    name_n = f.size
                elif n == 11:
                    n_events += 1
                elif n == 15:
                    _status(f.data, f.data + f.size, &code, &msg_p, &msg_n)
            elif f.wt == 1:
                if n == 7:
                    start = f.val
                elif n == 8:
                    stop = f.val
            elif f.wt == 0:
                if n == 6:
                    kind = <int32_t><uint32_t>f.val
        if not (self.have_last and tid_n == 16 and memcmp(tid, self.last, 16) == 0):
            # Spans of one trace travel together: their hex text is made once, shared.
            if tid_n != 16 or _zero(tid, 16):
                raise _required(_bytes(tid, tid_n), i, j, k, "trace_id", 16)
            memcpy(self.last, tid, 16)
            self.have_last = True
            self.trace_id = _hex(tid, 16)
        if sid_n != 8 or _zero(sid, 8):
            raise _required(_bytes(sid, sid_n), i, j, k, "span_id", 8)
        span_id = <int64_t>_be64(sid)
        if pid_n == 0:
            parent_id = None
        elif pid_n == 8:
            parent_id = (<int64_t>_be64(pid_p)) or None
        else:
            raise WireError(
                f"{_where(i, j, k)}.parent_span_id: expected 8 bytes, got {pid_n}"
            )
        if not start:
            raise WireError(f"{_where(i, j, k)}.start_time_unix_nano: missing")
        if not (n_events or code == STATUS_ERROR):
            # The common span, no events and no failure: its row is built right here.
            attrs_json = self.attrs_json(p, end, kind)
            if attrs_json is not _FALLBACK:
                location = None
            else:
                attrs = PyDict_Copy(self.extra) if self.extra is not None else {}
                if has_attrs:
                    _into(attrs, p, end, 9)
                if kind > 1:
                    attrs[_KIND_KEY] = _KIND_NAMES.get(kind, kind)
                if FILE_KEY in attrs or FILE_KEY_NEW in attrs:
                    location = _pop_location(attrs)
                else:
                    location = None
                attrs_json = _dumps_attrs(attrs)
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
                    _limited(name_p, name_n, NAME_LIMIT) or None,
                    None,
                    attrs_json,
                    None,
                    None,
                    None,
                    location,
                )
            )
            return 0
        attrs = PyDict_Copy(self.extra) if self.extra is not None else {}
        if has_attrs:
            _into(attrs, p, end, 9)
        self.budget -= n_events
        if self.budget < 0:
            raise _too_many(
                self.max_records - self.budget, self.max_records, "spans and events"
            )
        events = []
        q = p
        while q < end:
            q = _next(q, end, &f)
            if q == NULL:
                return _corrupt()
            if f.num == 11 and f.wt == 2:
                events.append(_event(f.data, f.data + f.size))
        _span_rows(
            self.out,
            self.res,
            self.trace_id,
            span_id,
            parent_id,
            _str(name_p, name_n),
            kind,
            start,
            stop,
            code,
            _str(msg_p, msg_n),
            attrs,
            events,
        )
        return 0


cdef int _status(cptr p, cptr end, int32_t* code, cptr* msg, Py_ssize_t* msg_n) except -1:
    # A Status sent twice merges: each field keeps the last value it was given.
    cdef Field f
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            return _corrupt()
        if f.num == 2 and f.wt == 2:
            msg[0] = f.data
            msg_n[0] = f.size
        elif f.num == 3 and f.wt == 0:
            code[0] = <int32_t><uint32_t>f.val
    return 0


cdef object _event(cptr p, cptr end):
    cdef Field f
    cdef cptr q = p
    cdef cptr name_p = NULL
    cdef Py_ssize_t name_n = 0
    cdef uint64_t ts = 0
    cdef bint has_attrs = False
    cdef dict attrs = {}
    while q < end:
        q = _next(q, end, &f)
        if q == NULL:
            raise _broken()
        if f.num == 1 and f.wt == 1:
            ts = f.val
        elif f.num == 2 and f.wt == 2:
            name_p = f.data
            name_n = f.size
        elif f.num == 3 and f.wt == 2:
            has_attrs = True
    if has_attrs:
        _into(attrs, p, end, 3)
    return _Event(ts, _str(name_p, name_n), attrs)


cdef str _where(Py_ssize_t i, Py_ssize_t j, Py_ssize_t k):
    return f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"


cdef object _required(bytes raw, Py_ssize_t i, Py_ssize_t j, Py_ssize_t k, str field, int size):
    if len(raw) != size:
        return WireError(f"{_where(i, j, k)}.{field}: expected {size} bytes, got {len(raw)}")
    return WireError(f"{_where(i, j, k)}.{field}: all zero (not a valid id)")


def decode_traces_pb(body, max_records):
    """Rows for a protobuf ``ExportTraceServiceRequest``, as the twin makes them."""
    cdef Field f
    cdef cptr p
    cdef cptr end
    cdef Py_ssize_t count, i = 0
    cdef _Traces t
    if type(body) is not bytes:
        return _twin_module()._decode_traces_upb(body, max_records)
    count = _checked(
        body,
        M_TRACES,
        M_SPAN,
        "ExportTraceServiceRequest",
        "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
    )
    if count > max_records:
        raise _too_many(count, max_records, "spans")
    t = _Traces.__new__(_Traces)
    t.out = []
    t.max_records = max_records
    t.budget = _records_cap(max_records) - count
    t.have_last = False
    p = <cptr>PyBytes_AS_STRING(body)
    end = p + PyBytes_GET_SIZE(body)
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            raise _broken()
        if f.num == 1 and f.wt == 2:
            t.resource_spans(f.data, f.data + f.size, i)
            i += 1
    return t.out


# ---- logs -----------------------------------------------------------------------------------


cdef object _body(cptr p, Py_ssize_t n, list parts):
    # ``_pb_body`` of the twin: a string as text, anything else as its JSON.
    cdef AnyCase a
    cdef cptr end
    if parts is not None:
        twin = _twin_module()
        return twin._pb_body(_AnyValue.FromString(b"".join(parts)))
    if p == NULL:
        return None
    end = p + n
    _scan_any(p, end, &a)
    if _merged(&a):
        twin = _twin_module()
        return twin._pb_body(_AnyValue.FromString(_bytes(p, n)))
    if a.case == 0:
        return None
    if a.case == 1:
        return _limited(a.data, a.size, MESSAGE_LIMIT)
    value = _any(p, end, 0)
    return _text(_dumps(value).decode("utf-8"), _MESSAGE_LIMIT)


cdef int _log_records(
    list out, object res, cptr p, cptr end, Py_ssize_t i, Py_ssize_t j
) except -1:
    cdef Field f
    cdef cptr q = p
    cdef cptr scope_p = NULL
    cdef Py_ssize_t scope_n = 0, k = 0
    # The scope's name first, wherever it is on the wire (a scope sent twice merges).
    while q < end:
        q = _next(q, end, &f)
        if q == NULL:
            return _corrupt()
        if f.num == 1 and f.wt == 2:
            _scope_name(f.data, f.data + f.size, &scope_p, &scope_n)
    scope_name = _str(scope_p, scope_n)
    q = p
    while q < end:
        q = _next(q, end, &f)
        if q == NULL:
            return _corrupt()
        if f.num == 2 and f.wt == 2:
            out.append(_log_record(res, scope_name, f.data, f.data + f.size, i, j, k))
            k += 1
    return 0


cdef int _scope_name(cptr p, cptr end, cptr* name, Py_ssize_t* name_n) except -1:
    cdef Field f
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            return _corrupt()
        if f.num == 1 and f.wt == 2:
            name[0] = f.data
            name_n[0] = f.size
    return 0


cdef object _log_record(
    object res, str scope_name, cptr p, cptr end, Py_ssize_t i, Py_ssize_t j, Py_ssize_t k
):
    cdef Field f
    cdef cptr q = p
    cdef cptr tid = NULL
    cdef cptr sid = NULL
    cdef cptr text_p = NULL
    cdef cptr event_p = NULL
    cdef cptr body_p = NULL
    cdef Py_ssize_t tid_n = 0, sid_n = 0, text_n = 0, event_n = 0, body_n = 0, bodies = 0
    cdef uint64_t ts = 0, observed = 0, n
    cdef int32_t severity = 0
    cdef bint has_attrs = False
    cdef list parts = None
    cdef dict attrs
    while q < end:
        q = _next(q, end, &f)
        if q == NULL:
            raise _broken()
        n = f.num
        if f.wt == 2:
            if n == 6:
                has_attrs = True
            elif n == 9:
                tid = f.data
                tid_n = f.size
            elif n == 10:
                sid = f.data
                sid_n = f.size
            elif n == 3:
                text_p = f.data
                text_n = f.size
            elif n == 5:
                body_p = f.data
                body_n = f.size
                bodies += 1
            elif n == 12:
                event_p = f.data
                event_n = f.size
        elif f.wt == 1:
            if n == 1:
                ts = f.val
            elif n == 11:
                observed = f.val
        elif f.wt == 0:
            if n == 2:
                severity = <int32_t><uint32_t>f.val
    where = f"resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
    if tid_n == 0:
        trace_id = None
    elif tid_n != 16:
        raise WireError(f"{where}.trace_id: expected 16 bytes, got {tid_n}")
    else:
        trace_id = None if _zero(tid, 16) else _hex(tid, 16)
    if sid_n == 0:
        span_id = None
    elif sid_n != 8:
        raise WireError(f"{where}.span_id: expected 8 bytes, got {sid_n}")
    else:
        span_id = (<int64_t>_be64(sid)) or None
    extra = res.extra
    attrs = PyDict_Copy(extra) if extra else {}
    if has_attrs:
        _into(attrs, p, end, 6)
    if bodies > 1:
        # A body sent twice merges: the official class does that from all its parts.
        parts = []
        q = p
        while q < end:
            q = _next(q, end, &f)
            if q == NULL:
                raise _broken()
            if f.num == 5 and f.wt == 2:
                parts.append(_bytes(f.data, f.size))
    return _log_row(
        res,
        scope_name,
        ts or observed,
        severity,
        _str(text_p, text_n),
        _body(body_p, body_n, parts),
        attrs,
        trace_id,
        span_id,
        _str(event_p, event_n),
    )


def decode_logs_pb(body, max_records):
    """Rows for a protobuf ``ExportLogsServiceRequest``, as the twin makes them."""
    cdef Field f
    cdef Field g
    cdef cptr p
    cdef cptr end
    cdef cptr q
    cdef cptr qend
    cdef Py_ssize_t count, i = 0, j
    cdef list out = []
    if type(body) is not bytes:
        return _twin_module()._decode_logs_upb(body, max_records)
    count = _checked(
        body,
        M_LOGS,
        M_LOG_RECORD,
        "ExportLogsServiceRequest",
        "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
    )
    if count > max_records:
        raise _too_many(count, max_records, "log records")
    p = <cptr>PyBytes_AS_STRING(body)
    end = p + PyBytes_GET_SIZE(body)
    while p < end:
        p = _next(p, end, &f)
        if p == NULL:
            raise _broken()
        if f.num == 1 and f.wt == 2:
            q = f.data
            qend = q + f.size
            res = _resource(q, qend)
            j = 0
            while q < qend:
                q = _next(q, qend, &g)
                if q == NULL:
                    raise _broken()
                if g.num == 2 and g.wt == 2:
                    _log_records(out, res, g.data, g.data + g.size, i, j)
                    j += 1
            i += 1
    return out
