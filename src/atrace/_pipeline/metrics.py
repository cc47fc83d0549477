"""Snapshots of the counters: the pipeline's (``atrace.metrics()``) and each sink lane's.

A leaf module: the pipeline and the delivery lanes both build these, and neither imports the
other for them.
"""

from __future__ import annotations

from .._records import Frozen

__all__ = ("LaneStats", "Metrics")


class LaneStats(Frozen):
    """A frozen snapshot of one lane's counters (records unless said otherwise).

    :ivar name: the sink's name.
    :ivar written: stored by the sink, directly or by replay of this process's spill.
    :ivar spilled: appended to the spill by this process.
    :ivar spilled_pending: of those, not replayed yet.
    :ivar replayed: replayed from the spill (this process's or an earlier one's).
    :ivar dropped_spill: could not be spilled: the spill was full or not writable.
    :ivar dropped_permanent: refused by the sink with a permanent error (kept apart on disk).
    :ivar retries: extra attempts (batches).
    :ivar errors: failed attempts (batches).
    :ivar breaker_state: the sink's circuit breaker: ``closed``, ``open`` or ``half_open``.
    :ivar breaker_trips: times it opened.
    """

    __slots__ = (
        "breaker_state",
        "breaker_trips",
        "dropped_permanent",
        "dropped_spill",
        "errors",
        "name",
        "replayed",
        "retries",
        "spilled",
        "spilled_pending",
        "written",
    )

    name: str
    written: int
    spilled: int
    spilled_pending: int
    replayed: int
    dropped_spill: int
    dropped_permanent: int
    retries: int
    errors: int
    breaker_state: str
    breaker_trips: int

    def __init__(
        self,
        *,
        name: str,
        written: int,
        spilled: int,
        spilled_pending: int,
        replayed: int,
        dropped_spill: int,
        dropped_permanent: int,
        retries: int,
        errors: int,
        breaker_state: str,
        breaker_trips: int,
    ) -> None:
        self._set(
            name=name,
            written=written,
            spilled=spilled,
            spilled_pending=spilled_pending,
            replayed=replayed,
            dropped_spill=dropped_spill,
            dropped_permanent=dropped_permanent,
            retries=retries,
            errors=errors,
            breaker_state=breaker_state,
            breaker_trips=breaker_trips,
        )


# The figures of a pipeline without sink lanes (one that hands its rows to a receiver).
NO_LANE = LaneStats(
    name="",
    written=0,
    spilled=0,
    spilled_pending=0,
    replayed=0,
    dropped_spill=0,
    dropped_permanent=0,
    retries=0,
    errors=0,
    breaker_state="closed",
    breaker_trips=0,
)


class Metrics(Frozen):
    """A frozen snapshot of the pipeline's counters (records unless said otherwise); call
    :func:`atrace.metrics` again for fresh figures.

    :ivar accepted: handed to atrace by emit calls.
    :ivar batches: batches handed to the sinks.
    :ivar breaker_state: the first sink's circuit breaker: ``closed``, ``open`` or ``half_open``.
    :ivar breaker_trips: times it opened.
    :ivar capacity: records the ring holds.
    :ivar dropped: ``dropped_ring + dropped_spill + dropped_permanent``.
    :ivar dropped_attributes: attributes past ``max_attributes``, left out of their records.
    :ivar dropped_permanent: refused by the sink for good (kept apart on disk as rejected).
    :ivar dropped_ring: discarded by the ring's policy when full.
    :ivar dropped_spill: could not be spilled: the spill was full or not writable.
    :ivar flush_latency_mean_ms: time to deliver one batch to every sink.
    :ivar flush_latency_p99_ms: its 99th percentile.
    :ivar high_water: most records the ring ever held at once.
    :ivar implementation: which ring runs: ``"cython"`` or ``"python"``.
    :ivar in_flight: drained from the ring, batch not settled yet.
    :ivar open_spans: entered and not yet exited.
    :ivar queue_size: in the ring now.
    :ivar replayed: sent from the spill (also an earlier process's).
    :ivar retries: extra attempts, in batches.
    :ivar running: whether a flusher is active.
    :ivar scrubbed: secret values replaced by a marker before records left the process.
    :ivar sink_errors: failed attempts, in batches, all sinks.
    :ivar sinks: per-sink snapshots.
    :ivar spilled: written to the spill by this process.
    :ivar spilled_pending: of those, not replayed yet.
    :ivar written: stored by the sink (directly or replayed from this process's spill).
    """

    __slots__ = (
        "accepted",
        "batches",
        "breaker_state",
        "breaker_trips",
        "capacity",
        "dropped",
        "dropped_attributes",
        "dropped_permanent",
        "dropped_ring",
        "dropped_spill",
        "flush_latency_mean_ms",
        "flush_latency_p99_ms",
        "high_water",
        "implementation",
        "in_flight",
        "open_spans",
        "queue_size",
        "replayed",
        "retries",
        "running",
        "scrubbed",
        "sink_errors",
        "sinks",
        "spilled",
        "spilled_pending",
        "written",
    )

    accepted: int
    batches: int
    breaker_state: str
    breaker_trips: int
    capacity: int
    dropped: int
    dropped_attributes: int
    dropped_permanent: int
    dropped_ring: int
    dropped_spill: int
    flush_latency_mean_ms: float
    flush_latency_p99_ms: float
    high_water: int
    implementation: str
    in_flight: int
    open_spans: int
    queue_size: int
    replayed: int
    retries: int
    running: bool
    scrubbed: int
    sink_errors: int
    sinks: tuple[LaneStats, ...]
    spilled: int
    spilled_pending: int
    written: int

    def __init__(
        self,
        *,
        accepted: int,
        batches: int,
        breaker_state: str,
        breaker_trips: int,
        capacity: int,
        dropped: int,
        dropped_permanent: int,
        dropped_ring: int,
        dropped_spill: int,
        flush_latency_mean_ms: float,
        flush_latency_p99_ms: float,
        high_water: int,
        implementation: str,
        in_flight: int,
        open_spans: int,
        queue_size: int,
        replayed: int,
        retries: int,
        running: bool,
        sink_errors: int,
        sinks: tuple[LaneStats, ...],
        spilled: int,
        spilled_pending: int,
        written: int,
        scrubbed: int = 0,
        dropped_attributes: int = 0,
    ) -> None:
        self._set(
            accepted=accepted,
            batches=batches,
            breaker_state=breaker_state,
            breaker_trips=breaker_trips,
            capacity=capacity,
            dropped=dropped,
            dropped_permanent=dropped_permanent,
            dropped_ring=dropped_ring,
            dropped_spill=dropped_spill,
            flush_latency_mean_ms=flush_latency_mean_ms,
            flush_latency_p99_ms=flush_latency_p99_ms,
            high_water=high_water,
            implementation=implementation,
            in_flight=in_flight,
            open_spans=open_spans,
            queue_size=queue_size,
            replayed=replayed,
            retries=retries,
            running=running,
            sink_errors=sink_errors,
            sinks=sinks,
            spilled=spilled,
            spilled_pending=spilled_pending,
            written=written,
            scrubbed=scrubbed,
            dropped_attributes=dropped_attributes,
        )

    def plus(self, other: Metrics) -> Metrics:
        """These figures with the counts of ``other`` added: the records an earlier pipeline of
        this process accepted (a configuration replaced) stay counted. Gauges of the buffer,
        the breaker and the sinks stay this snapshot's."""
        values = self.as_dict()
        for name in _SUMMED:
            values[name] += getattr(other, name)
        return Metrics(**values)


# The counters Metrics.plus adds up; the rest describe the pipeline in force.
_SUMMED = (
    "accepted",
    "batches",
    "breaker_trips",
    "dropped",
    "dropped_attributes",
    "dropped_permanent",
    "dropped_ring",
    "dropped_spill",
    "in_flight",
    "queue_size",
    "replayed",
    "retries",
    "scrubbed",
    "sink_errors",
    "spilled",
    "spilled_pending",
    "written",
)
