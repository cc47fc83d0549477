"""The sink contract: what the pipeline calls on a destination, and the defaults of the rest.

A sink is any object with the members of :class:`Sink`; no base class is needed. The optional
members are read once, when the pipeline is built, by :meth:`SinkOptions.of`, which fills in
the defaults of those a sink leaves out (or sets to None).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._delivery.classify import Verdict, classify
from .._records import Batch
from ..errors import ConfigError

T = TypeVar("T")

__all__ = ("DEFAULT_CONCURRENCY", "Sink", "SinkOptions", "off_loop")

# One write at a time keeps batches in the order they were drained from the ring.
DEFAULT_CONCURRENCY = 1
# Spill directory names: what a path could misread becomes "_", and the length stays sane.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_KEY = 80


@runtime_checkable
class Sink(Protocol):
    """A destination for batches: ``name``, ``open()``, ``write(batch)`` and ``close()``.

    The pipeline opens a sink before its first write, and again after a failed write or a
    ``close()``; a sink must therefore accept ``open`` after ``close``. A failed write raises;
    the pipeline retries it, spills it, or keeps it apart as rejected (see ``classify``).

    Optional members, each with the default that applies when a sink does not define it:

    ``concurrency: int = 1``
        How many writes may run at once. One keeps batches in order (the console); a sink with
        a connection pool may take one per connection.
    ``spill_key: str = name``
        Names the directory where batches this sink could not take are spilled. Give it what
        identifies the destination (its URL), so that every process writing there replays the
        same spill. Characters other than letters, digits, ``_ . -`` become ``_``.
    ``classify(exc) -> Verdict = atrace._delivery.classify.classify``
        Whether a failed write is worth retrying, and after what delay. The default retries
        connection errors and time-outs and refuses anything else for good.
    """

    name: str  # shown in warnings and in the per-sink metrics

    async def open(self) -> None:
        """Connect (and prepare the destination); called again after ``close``."""

    async def write(self, batch: Batch) -> None:
        """Store every row of ``batch``, or raise. A sink that records ``batch.id`` with the rows
        can store a batch that is sent twice (a retry after a lost answer) only once."""

    async def close(self) -> None:
        """Release what ``open`` took."""


class SinkOptions:
    """The optional members of one sink, each as the sink gives it or defaulted."""

    __slots__ = ("classify", "concurrency", "name", "spill_key")

    name: str
    concurrency: int
    spill_key: str  # a directory name
    classify: Callable[[BaseException], Verdict]

    def __init__(
        self,
        name: str,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        spill_key: str | None = None,
        classify: Callable[[BaseException], Verdict] = classify,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"{name}.concurrency", concurrency, "expected an integer >= 1")
        if not callable(classify):
            raise ConfigError(f"{name}.classify", classify, "expected a callable or None")
        self.name = name
        self.concurrency = concurrency
        self.spill_key = _UNSAFE.sub("_", str(spill_key or name))[:_MAX_KEY] or "sink"
        self.classify = classify

    @classmethod
    def of(cls, sink: Any) -> SinkOptions:
        """The options of a sink object: its own members where it has them, the defaults
        elsewhere."""
        given = {}
        for key in ("concurrency", "spill_key", "classify"):
            value = getattr(sink, key, None)
            if value is not None:
                given[key] = value
        return cls(str(getattr(sink, "name", None) or type(sink).__name__), **given)

    def __repr__(self) -> str:
        return (
            f"SinkOptions({self.name!r}, concurrency={self.concurrency}, "
            f"spill_key={self.spill_key!r}, classify={self.classify!r})"
        )


async def off_loop(fn: Callable[..., T], *args: Any, offload: bool) -> T:
    """``fn(*args)``, in a worker thread when ``offload``: slow work (encoding a large batch,
    importing a driver, starting the embedded server) would hold up the application's event
    loop."""
    if not offload:
        return fn(*args)
    try:
        return await asyncio.to_thread(fn, *args)
    except RuntimeError:
        # At interpreter exit the default executor takes no new work: run here instead.
        return fn(*args)
