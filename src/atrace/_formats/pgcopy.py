"""Binary COPY encoding of rows: the compiled ``_pgcopy`` or, failing that, its twin."""

from __future__ import annotations

import os

__all__ = ("HEADER", "IMPLEMENTATION", "TRAILER", "encode_rows")

if os.environ.get("ATRACE_PUREPYTHON"):
    from ._pgcopy_py import HEADER, TRAILER, encode_rows

    IMPLEMENTATION = "python"
else:
    try:
        from ._pgcopy import HEADER, TRAILER, encode_rows

        IMPLEMENTATION = "cython"
    except ImportError:
        from ._pgcopy_py import HEADER, TRAILER, encode_rows

        IMPLEMENTATION = "python"
