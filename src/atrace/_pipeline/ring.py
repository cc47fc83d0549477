"""Picks the record ring that runs: the compiled one, or its pure-Python twin."""

import os
import typing

__all__ = ("IMPLEMENTATION", "POLICIES", "Ring")

# An empty value means unset, and "0" means off, like every other ATRACE_* switch.
_FORCE_TWIN = os.environ.get("ATRACE_PUREPYTHON", "") not in ("", "0")

if typing.TYPE_CHECKING:
    # The stub and the twin share one API, so the checker needs only one of them.
    from .._ring_py import POLICIES, Ring

    IMPLEMENTATION: typing.Literal["cython", "python"]
elif _FORCE_TWIN:
    from .._ring_py import POLICIES, Ring

    IMPLEMENTATION = "python"
else:
    try:
        from .._ring import POLICIES, Ring

        IMPLEMENTATION = "cython"
    except ImportError:
        from .._ring_py import POLICIES, Ring

        IMPLEMENTATION = "python"
