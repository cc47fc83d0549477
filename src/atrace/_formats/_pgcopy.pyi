"""Type stub of the compiled binary COPY encoder; its API is the twin's in ``_pgcopy_py``."""

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ("HEADER", "TRAILER", "encode_rows")

HEADER: bytes
TRAILER: bytes

def encode_rows(
    rows: Sequence[tuple[Any, ...]],
    start: int = 0,
    stop: int = -1,
    extra: Sequence[Any] = (),
    on_error: Callable[[tuple[Any, ...], Exception], tuple[Any, ...]] | None = None,
    keep: int = 0xFF,
) -> bytes: ...
