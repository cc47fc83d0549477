"""Binary COPY encoding of rows that runs: the compiled ``_pgcopy``, or its twin ``_pgcopy_py``."""

import typing
from collections.abc import Sequence
from operator import itemgetter

from .. import _speedups
from .._records import COLUMNS, TS

__all__ = (
    "ALL_OPTIONAL",
    "COPY_COLUMNS",
    "HEADER",
    "IMPLEMENTATION",
    "OPTIONAL",
    "TRAILER",
    "copy_columns",
    "encode_rows",
)

# The columns an encoded row may fill, in order: COLUMNS, then ``ts_frac``, the nanoseconds of
# ``ts`` that its timestamptz (microseconds) cannot hold, so that a time reads back exact. The
# caller's extra columns (the project) follow.
COPY_COLUMNS = (*COLUMNS, "ts_frac")
# The columns of schemas 5 and 6, null on most rows: a batch sends only those it has values in
# (each field costs PostgreSQL's COPY and heap alike, null or not). Bit i of ``keep`` is
# OPTIONAL[i]; the last one, ts_frac, is not in a row but computed from ts.
OPTIONAL = (*COLUMNS[COLUMNS.index("span_kind") :], "ts_frac")
ALL_OPTIONAL = (1 << len(OPTIONAL)) - 1
_FIRST = COLUMNS.index("span_kind")  # the first optional column's place in a row
_IN_ROW = len(OPTIONAL) - 1
_GETTERS = tuple(itemgetter(_FIRST + bit) for bit in range(_IN_ROW))
_TS = itemgetter(TS)
_BASE = COLUMNS[:_FIRST]


def copy_columns(rows: Sequence[tuple[object, ...]]) -> tuple[tuple[str, ...], int]:
    """The COPY column list for ``rows`` and the ``keep`` mask :func:`encode_rows` takes: the
    base columns, then each optional one that some row has a value in."""
    keep = 0
    n = len(rows)
    # One C-level pass per column: the optional columns are null in most rows.
    for bit, getter in enumerate(_GETTERS):
        if list(map(getter, rows)).count(None) != n:
            keep |= 1 << bit
    # Nanoseconds below the microsecond: any ts not a multiple of 1000 (ts are ints).
    if any(map((1000).__rmod__, map(_TS, rows))):
        keep |= 1 << _IN_ROW
    names = _BASE + tuple(name for bit, name in enumerate(OPTIONAL) if keep >> bit & 1)
    return names, keep


if typing.TYPE_CHECKING:
    # The stub and the twin declare one API; the checker reads the twin's.
    from ._pgcopy_py import HEADER, TRAILER, encode_rows

    IMPLEMENTATION: typing.Literal["cython", "python"]
else:
    _module, IMPLEMENTATION = _speedups.load(
        "atrace._formats._pgcopy", "atrace._formats._pgcopy_py"
    )
    HEADER = _module.HEADER
    TRAILER = _module.TRAILER
    encode_rows = _module.encode_rows
