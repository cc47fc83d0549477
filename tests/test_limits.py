"""The collector's limits: one frozen, validated value, copied with replace()."""

from __future__ import annotations

import dataclasses

import pytest

from atrace.collector._limits import DEFAULT_LIMITS, KeyGate, Limits
from atrace.errors import ConfigError, RateLimited


class TestLimits:
    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            ("max_body", 10, "expected an integer from 1024 to 17179869184"),
            ("max_records", 0, "expected an integer from 1 to 10000000"),
            ("pool_size", True, "expected an integer from 1 to 1000"),
            ("pool_wait", 0, "expected a number from 0.01 to 3600.0"),
            ("body_timeout", "30", "expected a number from 0.1 to 3600.0"),
        ],
    )
    def test_bad_value_names_field_value_and_bounds(
        self, field: str, value: object, reason: str
    ) -> None:
        """A value out of bounds raises ConfigError with the field, the value and the bounds."""
        with pytest.raises(ConfigError) as info:
            Limits(**{field: value})  # type: ignore[arg-type]
        assert (info.value.field, info.value.value) == (field, value)
        assert str(info.value) == f"{field}={value!r}: {reason}"

    def test_records_per_request_within_records_in_flight(self) -> None:
        """One request may not hold more records than the in-flight bound."""
        with pytest.raises(ConfigError, match="must not exceed max_inflight_records"):
            Limits(max_records=1000, max_inflight_records=999)

    def test_frozen_keyword_only_with_float_times(self) -> None:
        """Limits cannot change, take keywords only, and hold their times as floats."""
        limits = Limits(pool_wait=3, body_timeout=10)
        assert isinstance(limits.pool_wait, float) and limits.body_timeout == 10.0
        with pytest.raises(dataclasses.FrozenInstanceError):
            limits.pool_size = 2  # type: ignore[misc]
        with pytest.raises(TypeError):
            Limits(1024)  # type: ignore[misc]

    def test_replace_validates_again(self) -> None:
        """replace() copies the other fields and validates the new ones."""
        smaller = DEFAULT_LIMITS.replace(max_records=10)
        assert smaller.max_records == 10 and smaller.max_body == DEFAULT_LIMITS.max_body
        assert smaller == Limits(max_records=10)
        with pytest.raises(ConfigError, match="pool_size"):
            DEFAULT_LIMITS.replace(pool_size=0)


class TestKeyGate:
    def test_a_key_alone_uses_its_concurrency_and_shares_when_others_come(self) -> None:
        now = [0.0]
        gate = KeyGate(1000.0, 1000, 8, share=4, clock=lambda: now[0])
        for _ in range(6):  # alone: up to its own concurrency, past the share
            gate.enter("flood", "ingest")
        gate.enter("steady", "ingest")  # a key with nothing in flight always gets one slot
        with pytest.raises(RateLimited) as refused:
            gate.enter("flood", "ingest")
        assert refused.value.reason == "fair_share"
        gate.enter("steady", "ingest")  # 2 of a fair share of 2
        with pytest.raises(RateLimited):
            gate.enter("steady", "ingest")
        gate.leave("steady")
        gate.leave("steady")
        gate.enter("flood", "ingest")  # alone again
        assert gate.inflight == 7

    def test_the_per_key_cap_still_holds_alone(self) -> None:
        gate = KeyGate(1000.0, 1000, 2, share=8, clock=lambda: 0.0)
        gate.enter("a", "ingest")
        gate.enter("a", "ingest")
        with pytest.raises(RateLimited) as refused:
            gate.enter("a", "ingest")
        assert refused.value.reason == "concurrency"
