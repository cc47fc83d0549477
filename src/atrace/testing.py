"""Helpers for testing code that uses atrace: an in-memory sink that keeps every row."""

from __future__ import annotations

from typing import Any

import orjson

from .encode import COLUMNS, Row
from .sinks import Batch

__all__ = ("MemorySink",)


class MemorySink:
    """A sink that keeps rows in memory; ``records()`` gives them as dicts with attrs decoded."""

    name = "memory"

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.batch_ids: list[Any] = []
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def write(self, batch: Batch) -> None:
        self.batch_ids.append(batch.id)
        self.rows.extend(batch.rows)

    async def close(self) -> None:
        self.closed += 1

    def records(self) -> list[dict[str, Any]]:
        """Every row as a dict keyed by column name, attrs decoded from JSON."""
        out = []
        for row in self.rows:
            rec = dict(zip(COLUMNS, row, strict=True))
            if rec["attrs"] is not None:
                rec["attrs"] = orjson.loads(rec["attrs"])
            out.append(rec)
        return out

    def spans(self) -> list[dict[str, Any]]:
        """Rows of ended spans (complete, or end rows)."""
        return [r for r in self.records() if r["kind"] in (2, 3)]

    def logs(self) -> list[dict[str, Any]]:
        """Log rows."""
        return [r for r in self.records() if r["kind"] == 0]

    def clear(self) -> None:
        """Forget every row."""
        self.rows.clear()
        self.batch_ids.clear()
