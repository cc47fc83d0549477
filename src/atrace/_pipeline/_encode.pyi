"""Type stub of the compiled encoder; its twin is ``atrace._pipeline.encode.Encoder.rows_py``."""

from collections.abc import Iterable
from typing import Any

__all__ = ("encode_rows",)

def encode_rows(encoder: Any, records: Iterable[Any]) -> list[tuple[Any, ...]]: ...
