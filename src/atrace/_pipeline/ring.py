"""The record ring that runs: the compiled ``atrace._ring``, or its twin ``atrace._ring_py``."""

import typing

from .. import _speedups

__all__ = ("IMPLEMENTATION", "POLICIES", "Ring")

if typing.TYPE_CHECKING:
    # The stub and the twin declare one API; the checker reads the twin's.
    from .._ring_py import POLICIES, Ring

    IMPLEMENTATION: typing.Literal["cython", "python"]
else:
    _module, IMPLEMENTATION = _speedups.load("atrace._ring", "atrace._ring_py")
    POLICIES = _module.POLICIES
    Ring = _module.Ring
