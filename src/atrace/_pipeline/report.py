"""What atrace tells the user about loss: the first of each kind at once, then a summary a minute.

Nothing is dropped, spilled or failed in silence, and nothing floods the log either: the first
drop of each reason, the first spill and the first sink failure each print one line on the
``atrace`` logger as soon as the flusher sees them; after that, at most one summary a minute says
how many more there were. At shutdown and exit, one line says what was dropped and what still
waits in the spill, and where. The emit path never logs: the flusher reads the counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ("SUMMARY_EVERY", "Reporter")

_log = logging.getLogger("atrace")
# Seconds between two summaries.
SUMMARY_EVERY = 60.0


def _n(count: int) -> str:
    return f"{count:,}"


class Reporter:
    """Watches one pipeline's counters; called by its flusher between two looks at the ring."""

    __slots__ = ("_clock", "_first", "_lanes", "_last", "_last_summary", "_ring", "_since")

    def __init__(self, ring: Any, lanes: Sequence[Any], clock: Callable[[], float]) -> None:
        self._ring = ring
        self._lanes = lanes
        self._clock = clock
        self._first: set[tuple[str, str]] = set()  # (what, sink) already said once
        self._last: dict[tuple[str, str], int] = {}  # counters at the last look
        self._since: dict[tuple[str, str], int] = {}  # increases not said yet
        self._last_summary = clock()

    def _counters(self) -> list[tuple[str, str, int, Any]]:
        out: list[tuple[str, str, int, Any]] = [("buffer", "", self._ring.dropped, None)]
        for lane in self._lanes:
            out.append(("failed", lane.name, lane.errors, lane))
            out.append(("spilled", lane.name, lane.spilled, lane))
            out.append(("dropped_spill", lane.name, lane.dropped_spill, lane))
            out.append(("rejected", lane.name, lane.dropped_permanent, lane))
        return out

    def check(self) -> None:
        """Say what is new: a first occurrence now, the rest in the next summary."""
        for what, sink, count, lane in self._counters():
            key = (what, sink)
            grown = count - self._last.get(key, 0)
            if grown <= 0:
                continue
            self._last[key] = count
            if key not in self._first:
                self._first.add(key)
                self._say_first(what, grown, lane)
            else:
                self._since[key] = self._since.get(key, 0) + grown
        now = self._clock()
        if self._since and now - self._last_summary >= SUMMARY_EVERY:
            self._summary(now)

    def _say_first(self, what: str, count: int, lane: Any) -> None:
        if what == "buffer":
            ring = self._ring
            _log.warning(
                "atrace: the buffer is full (%s records, policy %s): %s records dropped so far;"
                " raise capacity, emit less, or use policy='block'",
                _n(ring.capacity),
                ring.policy,
                _n(count),
            )
        elif what == "failed":
            _log.warning(
                "atrace: sink %s failed (%s); retrying, then spilling what it does not take",
                lane.name,
                lane.last_error,
            )
        elif what == "spilled":
            _log.warning(
                "atrace: sink %s is not taking batches (%s): %s records spilled to %s, sent"
                " once it takes them again",
                lane.name,
                lane.last_error or "unavailable",
                _n(count),
                lane.spill_location,
            )
        elif what == "dropped_spill":
            _log.warning(
                "atrace: sink %s: %s records dropped: the spill at %s is full or not writable",
                lane.name,
                _n(count),
                lane.spill_location,
            )
        else:
            _log.warning(
                "atrace: sink %s refused %s records for good (%s); kept apart in %s",
                lane.name,
                _n(count),
                lane.last_error,
                lane.spill_location,
            )

    def _summary(self, now: float) -> None:
        minutes = now - self._last_summary
        self._last_summary = now
        parts = []
        labels = {
            "buffer": "dropped (buffer full)",
            "failed": "failed attempts",
            "spilled": "spilled",
            "dropped_spill": "dropped (spill full or not writable)",
            "rejected": "refused for good",
        }
        for (what, sink), count in sorted(self._since.items()):
            where = f"sink {sink}: " if sink else ""
            parts.append(f"{where}{_n(count)} {labels[what]}")
        self._since.clear()
        _log.warning("atrace: in the last %.0f s: %s", minutes, "; ".join(parts))

    def final(self, pipeline: Any) -> None:
        """At shutdown or exit: one line if anything was dropped or still waits in the spill."""
        self.check()
        ring = self._ring
        dropped = [(ring.dropped, "buffer full")] if ring.dropped else []
        waiting = []
        for lane in self._lanes:
            if lane.dropped_spill:
                dropped.append((lane.dropped_spill, f"spill of {lane.name} full or not writable"))
            if lane.dropped_permanent:
                dropped.append((lane.dropped_permanent, f"refused by {lane.name}"))
            if lane.spilled_pending:
                waiting.append(f"{_n(lane.spilled_pending)} in {lane.spill_location}")
        if not dropped and not waiting:
            return
        parts = []
        if waiting:
            parts.append(
                "records wait in the spill, sent by the next atrace process using it or by"
                " `atrace spill replay`: " + ", ".join(waiting)
            )
        if dropped:
            total = sum(n for n, _ in dropped)
            why = ", ".join(f"{_n(n)} {reason}" for n, reason in dropped)
            parts.append(f"{_n(total)} records were dropped ({why})")
        _log.warning("atrace: at %s, %s", pipeline.ending, "; ".join(parts))
