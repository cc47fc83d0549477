# cython: language_level=3
"""Rows in PostgreSQL's binary COPY format (compiled; the twin is ``_pgcopy_py``).

Encoding the rows here, in slices, lets the sink hand COPY data to the connection a slice at a
time and give the event loop back in between; a generic record encoder would hold it for the
whole batch.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy

__all__ = ("HEADER", "TRAILER", "encode_rows")

# Signature, flags (no OIDs), header extension length.
HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

cdef int64_t PG_EPOCH_US = 946684800000000
cdef int N_COLUMNS = 26
# span_kind's place: the seven columns from here, then ts_frac, are optional (``keep``'s bits).
cdef int FIRST_OPTIONAL = 19
cdef int N_OPTIONAL = 7

# Column kinds in COLUMNS order (see encode.COLUMNS and schema.py).
DEF T_TS = 0
DEF T_INT2 = 1
DEF T_UUID = 2
DEF T_INT8 = 3
DEF T_TEXT = 4
DEF T_INT4 = 5
DEF T_JSONB = 6

cdef int[26] KINDS = [
    T_TS, T_INT2, T_INT2, T_UUID, T_INT8, T_INT8, T_INT8, T_INT2,
    T_TEXT, T_TEXT, T_TEXT, T_INT4, T_TEXT, T_TEXT, T_JSONB, T_TEXT, T_TEXT, T_TEXT, T_TEXT,
    T_INT2, T_TEXT, T_INT2, T_TEXT, T_JSONB, T_JSONB, T_INT8,
]


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra
    cdef Py_ssize_t cap
    cdef char* data
    if need <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < need:
        cap = need + 4096
    data = <char*>PyMem_Realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline void put16(char* p, int16_t v) noexcept nogil:
    cdef uint16_t u = <uint16_t>v
    p[0] = <char>((u >> 8) & 0xFF)
    p[1] = <char>(u & 0xFF)


cdef inline void put32(char* p, int32_t v) noexcept nogil:
    cdef uint32_t u = <uint32_t>v
    p[0] = <char>((u >> 24) & 0xFF)
    p[1] = <char>((u >> 16) & 0xFF)
    p[2] = <char>((u >> 8) & 0xFF)
    p[3] = <char>(u & 0xFF)


cdef inline void put64(char* p, int64_t v) noexcept nogil:
    cdef uint64_t u = <uint64_t>v
    cdef int i
    for i in range(8):
        p[i] = <char>((u >> (56 - 8 * i)) & 0xFF)


cdef inline int hexval(char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef int put_text(Buf* b, object value, int jsonb) except -1:
    cdef const char* s
    cdef Py_ssize_t n
    cdef object enc
    if type(value) is str:
        try:
            s = PyUnicode_AsUTF8AndSize(value, &n)
        except UnicodeEncodeError:
            enc = (<str>value).encode("utf-8", "replace")
            return put_text(b, enc, jsonb)
    elif isinstance(value, bytes):
        s = PyBytes_AS_STRING(value)
        n = PyBytes_GET_SIZE(value)
    elif isinstance(value, str):
        return put_text(b, str(value), jsonb)
    else:
        raise TypeError(f"expected text, got {type(value).__name__}")
    if n > 0x7FFFFFF0:
        raise ValueError("value too long for one field")
    if not jsonb and memchr(s, 0, n) != NULL:
        # PostgreSQL refuses NUL in text and would fail the whole COPY for it.
        raise ValueError("text contains a NUL character")
    grow(b, n + 5)
    put32(b.data + b.size, <int32_t>(n + jsonb))
    b.size += 4
    if jsonb:
        b.data[b.size] = 1  # jsonb binary format version
        b.size += 1
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef int put_uuid(Buf* b, object value) except -1:
    cdef const char* text
    cdef Py_ssize_t i, j, n
    cdef int hi, lo
    cdef uint8_t[16] out
    if type(value) is str:
        text = PyUnicode_AsUTF8AndSize(value, &n)
        if n != 32 and n != 36:
            raise ValueError(f"trace id {value!r} is not 32 hex digits")
        j = 0
        i = 0
        while i < n and j < 16:
            if text[i] == 45:  # '-'
                i += 1
                continue
            if i + 1 >= n:
                break
            hi = hexval(text[i])
            lo = hexval(text[i + 1])
            if hi < 0 or lo < 0:
                raise ValueError(f"trace id {value!r} is not hex")
            out[j] = <uint8_t>(hi * 16 + lo)
            j += 1
            i += 2
        if j != 16 or i != n:
            raise ValueError(f"trace id {value!r} is not a 16-byte id")
        grow(b, 20)
        put32(b.data + b.size, 16)
        memcpy(b.data + b.size + 4, out, 16)
        b.size += 20
        return 0
    raw = value.bytes  # a uuid.UUID
    if len(raw) != 16:
        raise ValueError(f"trace id {value!r} is not a 16-byte id")
    grow(b, 20)
    put32(b.data + b.size, 16)
    memcpy(b.data + b.size + 4, PyBytes_AS_STRING(raw), 16)
    b.size += 20
    return 0


cdef int put_row(Buf* b, tuple row, list extra, int keep, int fields) except -1:
    cdef int i, kind
    cdef object v
    cdef int64_t x
    cdef int64_t frac = 0
    if len(row) != N_COLUMNS:
        raise ValueError(f"a row has {len(row)} columns, expected {N_COLUMNS}")
    grow(b, 2)
    put16(b.data + b.size, <int16_t>fields)
    b.size += 2
    for i in range(N_COLUMNS):
        if i >= FIRST_OPTIONAL and not (keep >> (i - FIRST_OPTIONAL)) & 1:
            continue  # an optional column this batch does not send
        v = row[i]
        if v is None:
            grow(b, 4)
            put32(b.data + b.size, -1)
            b.size += 4
            continue
        kind = KINDS[i]
        if kind == T_TEXT:
            put_text(b, v, 0)
        elif kind == T_INT8 or kind == T_TS:
            x = v  # OverflowError / TypeError for what is not an int64
            if kind == T_TS:
                # nanoseconds since 1970 → microseconds since 2000 (// floors: cdivision off);
                # the nanoseconds below go to ts_frac
                frac = x % 1000
                x = x // 1000 - PG_EPOCH_US
            grow(b, 12)
            put32(b.data + b.size, 8)
            put64(b.data + b.size + 4, x)
            b.size += 12
        elif kind == T_INT2:
            x = v
            if x < -32768 or x > 32767:
                raise OverflowError(f"{x} does not fit a smallint")
            grow(b, 6)
            put32(b.data + b.size, 2)
            put16(b.data + b.size + 4, <int16_t>x)
            b.size += 6
        elif kind == T_INT4:
            x = v
            if x < -2147483648 or x > 2147483647:
                raise OverflowError(f"{x} does not fit an integer")
            grow(b, 8)
            put32(b.data + b.size, 4)
            put32(b.data + b.size + 4, <int32_t>x)
            b.size += 8
        elif kind == T_UUID:
            put_uuid(b, v)
        else:  # T_JSONB
            put_text(b, v, 1)
    # ts_frac, after COLUMNS (when the batch sends it): null for 0
    if not keep & 128:
        pass
    elif frac:
        grow(b, 6)
        put32(b.data + b.size, 2)
        put16(b.data + b.size + 4, <int16_t>frac)
        b.size += 6
    else:
        grow(b, 4)
        put32(b.data + b.size, -1)
        b.size += 4
    for v in extra:
        put_text(b, v, 0)
    return 0


def encode_rows(rows, Py_ssize_t start=0, Py_ssize_t stop=-1, extra=(), on_error=None,
                int keep=0xFF):
    """``rows[start:stop]`` as binary COPY tuples (no header or trailer), plus ``extra`` text
    values appended to every row (columns after COLUMNS, such as the project). ``keep`` says
    which optional columns are sent (``pgcopy.copy_columns``; default all).

    A row that cannot be encoded is replaced by ``on_error(row, exc)`` (a row describing the
    problem) so one bad row never fails the rest; without ``on_error`` the error propagates.
    """
    cdef Buf b
    cdef Py_ssize_t i, mark, n = len(rows)
    cdef list more = list(extra)
    cdef int n_keep = 0, bit
    for bit in range(N_OPTIONAL + 1):
        if (keep >> bit) & 1:
            n_keep += 1
    cdef int fields = N_COLUMNS - N_OPTIONAL + n_keep + len(more)
    if stop < 0 or stop > n:
        stop = n
    if start < 0:
        start = 0
    b.size = 0
    b.cap = (stop - start) * 256 + 64
    b.data = <char*>PyMem_Malloc(b.cap)
    if b.data == NULL:
        raise MemoryError()
    try:
        for i in range(start, stop):
            mark = b.size
            try:
                put_row(&b, <tuple?>rows[i], more, keep, fields)
            except Exception as exc:
                if on_error is None:
                    raise
                b.size = mark
                put_row(&b, <tuple?>on_error(rows[i], exc), more, keep, fields)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        PyMem_Free(b.data)
