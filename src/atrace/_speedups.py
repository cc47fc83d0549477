"""The one switch between each compiled module and its pure-Python twin (``ATRACE_PUREPYTHON``).

Every compiled module ``_x`` (Cython, typed by ``_x.pyi``) has a twin ``_x_py`` with the same
API, and a façade ``x`` beside them that calls :func:`load` once, when it is imported, and
re-exports the module that runs. Neither the compiled module nor its twin imports the other or
the façade.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from types import MappingProxyType, ModuleType

from .config import purepython

# typing stays off `import atrace` (this module is on that path); only the checker reads these.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Literal

    Implementation = Literal["cython", "python"]

__all__ = ("FORCE_TWINS", "PAIRS", "implementations", "load")

# Read once: a façade picks its module when it is imported, for the life of the process.
FORCE_TWINS: Final = purepython()

# Each façade, then the compiled module and the twin it picks between.
PAIRS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "atrace._pipeline.ring": ("atrace._ring", "atrace._ring_py"),
        "atrace._emit.hot": ("atrace._emit._hot", "atrace._emit._hot_py"),
        "atrace._pipeline.encode": ("atrace._pipeline._encode", "atrace._pipeline._encode_py"),
        "atrace._formats.pgcopy": ("atrace._formats._pgcopy", "atrace._formats._pgcopy_py"),
        "atrace._formats.otlp.pb": ("atrace._formats.otlp._pb", "atrace._formats.otlp._pb_py"),
    }
)


def load(compiled: str, twin: str) -> tuple[ModuleType, Implementation]:
    """The compiled module and ``"cython"``, or the twin and ``"python"``.

    The twin runs when ``ATRACE_PUREPYTHON`` forces it, and when the compiled module does not
    import (not built, or built for another Python): atrace then works, only slower.
    """
    if FORCE_TWINS:
        return import_module(twin), "python"
    try:
        return import_module(compiled), "cython"
    except ImportError:
        return import_module(twin), "python"


def implementations() -> dict[str, Implementation]:
    """Which implementation runs behind each façade (importing every façade to find out)."""
    return {facade: import_module(facade).IMPLEMENTATION for facade in PAIRS}
