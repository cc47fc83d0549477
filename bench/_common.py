"""What several benchmark scripts share (run from the repository root: bench/ is on sys.path)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class DiscardSink:
    """A sink that accepts every batch and keeps nothing."""

    name = "discard"

    async def open(self) -> None:
        pass

    async def write(self, batch: Any) -> None:
        pass

    async def close(self) -> None:
        pass


def info_rows(n: int) -> list[tuple[Any, ...]]:
    """Rows exactly as atrace's encoder makes them from ``info("msg", a=1, b="x")`` records."""
    from atrace._pipeline.encode import Encoder
    from atrace.config import Config

    encoder = Encoder.from_config(Config(service="bench"))
    now = time.time_ns()
    location = (__file__, 1)
    records = [
        (0, now + i, 20, None, None, None, None, 0, None, __name__, "msg", {"a": 1, "b": "x"},
         None, location)
        for i in range(n)
    ]  # fmt: skip
    return encoder.rows(records)


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[tuple[str, str]]:
    """``(dsn, label)``: the given PostgreSQL, or a throwaway one (tests/_pg.py) for the block."""
    if dsn is not None:
        yield dsn, "--dsn"
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import _pg

    server = _pg.PgServer()
    server.start()
    try:
        yield server.dsn, "throwaway (tests/_pg.py settings)"
    finally:
        server.stop()
