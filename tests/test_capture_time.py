"""A record keeps what was true when it was made, though the flusher encodes it later."""

from __future__ import annotations

import asyncio

import pytest

import atrace
from atrace.errors import ConfigError
from atrace.testing import capture

ORIGIN = "atrace.exception.origin"


def _hex(span_id: int | None) -> str:
    assert span_id is not None
    return "%016x" % (span_id & 0xFFFFFFFFFFFFFFFF)


class TestContainersAreSnapshotted:
    def test_log_attributes_keep_their_value_at_the_call(self) -> None:
        items = [1, 2]
        nested = {"ids": items, "tags": {"a"}}
        raw = bytearray(b"ab")
        with capture() as cap:
            atrace.info("order", items=items, nested=nested, raw=raw, n=1)
            items.append(3)
            nested["tags"].add("b")
            nested["new"] = True
            raw.extend(b"cd")
        rec = cap.logs[0]
        assert rec.attrs["items"] == [1, 2]
        assert rec.attrs["nested"] == {"ids": [1, 2], "tags": ["a"]}
        assert rec.attrs["raw"] == "b'ab'"  # bytes are stored as their repr; not b'abcd'"
        assert rec.attrs["n"] == 1

    def test_the_slow_path_and_amit_snapshot_too(self) -> None:
        items = ["x"]

        async def main() -> None:
            await atrace.amit("amit", items=items)

        with capture() as cap:
            atrace.warning("extra", extra={"held": items}, module="m", items=items)
            asyncio.run(main())
            items.append("y")
        assert [r.attrs["items"] for r in cap.logs] == [["x"], ["x"]]
        assert cap.logs[0].attrs["held"] == ["x"]

    def test_span_attributes_are_taken_when_given(self) -> None:
        given = {"k": [1]}
        later = [1]
        tracer = atrace.Tracer("svc").bind(bound=[0])
        with capture() as cap:
            with atrace.span("s", given=given) as sp:
                given["k"].append(2)
                sp.set(later=later)
                later.append(2)
            with tracer.span("t"):
                pass
        assert cap.span("s").attrs == {"given": {"k": [1]}, "later": [1]}
        assert cap.span("t").attrs == {"bound": [0]}

    def test_a_cycle_is_copied_as_a_cycle(self) -> None:
        loop: list[object] = [1]
        loop.append(loop)
        with capture() as cap:
            atrace.info("cyclic", loop=loop)
            loop.append(2)
        stored = cap.logs[0].attrs["loop"]
        assert stored[0] == 1 and len(stored) == 2  # encoded with the cycle cut, not 3 long


def _inner() -> None:
    with atrace.span("inner"):
        raise ValueError("as raised")


def _outer() -> None:
    try:
        _inner()
    except ValueError as exc:
        exc.args = ("changed later",)
        raise exc


class TestExceptionsAreTakenWhenTheyLeave:
    def test_a_span_keeps_the_traceback_and_message_it_saw(self) -> None:
        with capture() as cap, pytest.raises(ValueError), atrace.span("outer"):
            _outer()
        inner, outer = cap.span("inner"), cap.span("outer")
        assert inner.error_message == "as raised"
        assert "ValueError: as raised" in inner.stack_trace
        assert "raise exc" not in inner.stack_trace
        assert "_outer" not in inner.stack_trace
        # The outer span saw it later: the re-raise and the new message are its to show.
        assert outer.error_message == "changed later"
        assert "raise exc" in outer.stack_trace

    def test_a_log_keeps_the_exception_as_it_was_at_the_call(self) -> None:
        with capture() as cap:
            try:
                raise KeyError("first")
            except KeyError as exc:
                atrace.exception("handled")
                exc.args = ("second",)
        rec = cap.logs[0]
        assert rec.error_message == "'first'"
        assert rec.stack_trace.rstrip().endswith("KeyError: 'first'")


class TestOneExceptionOneOrigin:
    def test_later_records_link_to_the_first(self) -> None:
        with capture() as cap:
            try:
                with atrace.span("outer"):
                    try:
                        with atrace.span("inner"):
                            raise RuntimeError("once")
                    except RuntimeError:
                        atrace.exception("seen")
                        raise
            except RuntimeError:
                pass
        inner, outer = cap.span("inner"), cap.span("outer")
        assert ORIGIN not in inner.attrs
        assert cap.logs[0].attrs[ORIGIN] == _hex(inner.span_id)
        assert outer.attrs[ORIGIN] == _hex(inner.span_id)

    def test_a_span_recording_its_own_exception_twice_stays_the_origin(self) -> None:
        with capture() as cap, pytest.raises(OSError), atrace.span("s") as sp:
            err = OSError("disk")
            sp.record_exception(err)
            raise err
        assert ORIGIN not in cap.span("s").attrs

    def test_a_log_first_then_its_span(self) -> None:
        with capture() as cap, pytest.raises(ValueError), atrace.span("s"):
            try:
                raise ValueError("x")
            except ValueError:
                atrace.exception("logged first")
                raise
        sp = cap.span("s")
        assert ORIGIN not in cap.logs[0].attrs
        assert sp.attrs[ORIGIN] == _hex(sp.span_id)  # the log was in this span

    def test_outside_any_span_the_link_is_empty(self) -> None:
        with capture() as cap:
            try:
                raise ValueError("x")
            except ValueError:
                atrace.exception("one")
                atrace.error("two", exc_info=True)
        assert ORIGIN not in cap.logs[0].attrs
        assert cap.logs[1].attrs[ORIGIN] == ""

    def test_distinct_exceptions_are_each_an_origin(self) -> None:
        with capture() as cap:
            for i in range(2):
                with pytest.raises(ValueError), atrace.span(f"s{i}"):
                    raise ValueError(i)
        assert all(ORIGIN not in s.attrs for s in cap.spans)


class TestPrintfStyleMessages:
    def test_arguments_fill_the_message_as_logging_does(self) -> None:
        with capture() as cap:
            atrace.info("user %s has %d items", "bob", 3, cart="c1")
            atrace.warning("%(who)s left", {"who": "ann"})
            atrace.error("100% sure")  # no arguments: the message is left alone
            try:
                raise ValueError("v")
            except ValueError:
                atrace.exception("failed for %s", "bob")
        assert [r.message for r in cap.logs] == [
            "user bob has 3 items",
            "ann left",
            "100% sure",
            "failed for bob",
        ]
        assert cap.logs[0].attrs == {"cart": "c1"}

    def test_arguments_read_at_the_call(self) -> None:
        items = [1]
        with capture() as cap:
            atrace.info("items %s", items)
            items.append(2)
        assert cap.logs[0].message == "items [1]"

    def test_arguments_that_do_not_fit_say_how_to_pass_values(self) -> None:
        with pytest.raises(ConfigError, match="keyword attributes") as info:
            atrace.info("user logged in", "bob")
        assert isinstance(info.value, ValueError)
        with pytest.raises(ConfigError, match="keyword attributes"):
            atrace.info("%d items", "three")


class TestSpanAsADecorator:
    def test_bare_span_decorator_points_to_traced(self) -> None:
        with pytest.raises(ConfigError, match=r"@atrace\.traced"):

            @atrace.span  # type: ignore[arg-type]
            def handler() -> None:
                pass

    def test_span_with_a_name_as_decorator_points_to_traced(self) -> None:
        with pytest.raises(ConfigError, match=r"@atrace\.traced"):

            @atrace.span("handler")  # type: ignore[operator]
            def handler() -> None:
                pass
