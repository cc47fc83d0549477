"""Type stub of the compiled row encoder; its API is the twin's in atrace._pipeline._encode_py."""

from collections.abc import Iterable
from typing import Any

__all__ = ("encode_rows",)

def encode_rows(encoder: Any, records: Iterable[Any]) -> list[tuple[Any, ...]]: ...
