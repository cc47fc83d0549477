"""Snapshots of the counters: Metrics and LaneStats, frozen keyword-only values."""

from __future__ import annotations

import pytest

import atrace
from atrace._pipeline.metrics import NO_LANE, LaneStats, Metrics

FIGURES: dict[str, object] = {
    "accepted": 10,
    "batches": 1,
    "breaker_state": "closed",
    "breaker_trips": 0,
    "capacity": 100,
    "dropped": 0,
    "dropped_attributes": 0,
    "dropped_permanent": 0,
    "dropped_ring": 0,
    "dropped_spill": 0,
    "flush_latency_mean_ms": 1.5,
    "flush_latency_p99_ms": 2.5,
    "high_water": 10,
    "implementation": "python",
    "in_flight": 0,
    "open_spans": 0,
    "queue_size": 0,
    "replayed": 0,
    "retries": 0,
    "running": True,
    "scrubbed": 0,
    "sink_errors": 0,
    "sinks": (NO_LANE,),
    "spilled": 0,
    "spilled_pending": 0,
    "written": 10,
}


class TestMetrics:
    def test_public_name_is_this_class(self) -> None:
        """atrace.Metrics is the snapshot class defined here."""
        assert atrace.Metrics is Metrics

    def test_every_figure_is_required_and_keyword_only(self) -> None:
        """A snapshot missing a figure, or given one positionally, is refused."""
        Metrics(**FIGURES)  # type: ignore[arg-type]
        missing = {k: v for k, v in FIGURES.items() if k != "written"}
        with pytest.raises(TypeError, match="written"):
            Metrics(**missing)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Metrics(*FIGURES.values())  # type: ignore[misc]

    def test_snapshot_is_frozen_and_equal_by_value(self) -> None:
        """A snapshot cannot change; two of the same figures are equal and hash alike."""
        a = Metrics(**FIGURES)  # type: ignore[arg-type]
        b = Metrics(**FIGURES)  # type: ignore[arg-type]
        assert a == b and hash(a) == hash(b)
        with pytest.raises(AttributeError, match="immutable"):
            a.written = 11  # type: ignore[misc]
        assert not hasattr(a, "__dict__")

    def test_as_dict_keeps_the_lane_snapshots(self) -> None:
        """as_dict() gives every figure by name, in field order, with LaneStats left as they are."""
        figures = Metrics(**FIGURES).as_dict()  # type: ignore[arg-type]
        assert list(figures) == list(FIGURES) and figures["sinks"] == (NO_LANE,)
        assert isinstance(figures["sinks"][0], LaneStats)


class TestLaneStats:
    def test_frozen_keyword_only(self) -> None:
        """A lane snapshot cannot change and is built by keyword."""
        with pytest.raises(AttributeError, match="immutable"):
            NO_LANE.written = 1  # type: ignore[misc]
        with pytest.raises(TypeError):
            LaneStats("x", 0, 0, 0, 0, 0, 0, 0, 0, "closed", 0)  # type: ignore[misc]
        assert NO_LANE.replace(name="pg").name == "pg"
