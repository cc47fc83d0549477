"""Binary COPY encoding of rows that runs: the compiled ``_pgcopy``, or its twin ``_pgcopy_py``."""

import typing

from .. import _speedups
from .._records import COLUMNS

__all__ = ("COPY_COLUMNS", "HEADER", "IMPLEMENTATION", "TRAILER", "encode_rows")

# The columns an encoded row fills, in order: COLUMNS, then ``ts_frac``, the nanoseconds of
# ``ts`` that its timestamptz (microseconds) cannot hold, so that a time reads back exact. The
# caller's extra columns (the project) follow.
COPY_COLUMNS = (*COLUMNS, "ts_frac")

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
