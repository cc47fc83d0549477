"""What several benchmark scripts share (run from the repository root: bench/ is on sys.path)."""

from __future__ import annotations

from typing import Any


class DiscardSink:
    """A sink that accepts every batch and keeps nothing."""

    name = "discard"

    async def open(self) -> None:
        pass

    async def write(self, batch: Any) -> None:
        pass

    async def close(self) -> None:
        pass
