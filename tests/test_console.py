"""The console sink: JSON lines for machines, trace trees for people, never an exception."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from atrace._records import COLUMNS
from atrace.errors import ConfigError, MissingExtraError
from atrace.sinks import Batch, Sink, resolve
from atrace.sinks import console as console_module
from atrace.sinks.console import ConsoleSink, format_duration, json_line

TRACE = "0190f1c2a3b4c5d6e7f8091a2b3c4d5e"
OTHER_TRACE = "0190f1c2a3b4ffffffffffffffffffff"
T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z

ROOT, CHILD, FAILED, RUNNING = 0x1111, -0x2222, 0x3333, 0x4444

_DEFAULTS: dict[str, Any] = {
    "ts": T0,
    "kind": 0,
    "level": 20,
    "trace_id": None,
    "span_id": None,
    "parent_id": None,
    "duration_ns": None,
    "status": 0,
    "service": "checkout",
    "environment": "dev",
    "host": "box",
    "pid": 4242,
    "name": "app",
    "message": None,
    "attrs": None,
    "error_type": None,
    "error_message": None,
    "stack_trace": None,
    "location": "app.py:10",
}


def make_row(**fields: Any) -> tuple[Any, ...]:
    """A row in COLUMNS order: the defaults above, overridden by ``fields``."""
    unknown = set(fields) - set(COLUMNS)
    assert not unknown, unknown
    values = {**_DEFAULTS, **fields}
    return tuple(values.get(c) for c in COLUMNS)


def span_row(
    span_id: int, parent_id: int | None, name: str, offset: int, **fields: Any
) -> tuple[Any, ...]:
    """A complete, successful span row in TRACE starting ``offset`` ns after T0."""
    base: dict[str, Any] = {
        "ts": T0 + offset,
        "kind": 3,
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_id": parent_id,
        "duration_ns": 1_500_000,
        "status": 1,
        "name": name,
    }
    return make_row(**{**base, **fields})


def trace_rows() -> list[tuple[Any, ...]]:
    """A root with a child (holding a log), a failed span and a running span, shuffled."""
    return [
        span_row(
            FAILED,
            ROOT,
            "charge",
            300,
            level=40,
            status=2,
            duration_ns=8_000_000,
            error_type="ValueError",
            error_message="card declined",
            stack_trace="Traceback (most recent call last):\nValueError: card declined",
        ),
        make_row(
            ts=T0 + 250,
            trace_id=TRACE,
            span_id=CHILD,
            name="app.db",
            message="fetched",
            attrs=b'{"rows":3}',
        ),
        span_row(RUNNING, ROOT, "worker", 400, kind=1, status=0, duration_ns=None),
        span_row(CHILD, ROOT, "db.query", 200, duration_ns=3_100_000, attrs=b'{"sql":"select 1"}'),
        span_row(
            ROOT, None, "GET /orders", 100, duration_ns=15_200_000, attrs=b'{"http.method":"GET"}'
        ),
    ]


async def write(sink: ConsoleSink, rows: list[tuple[Any, ...]]) -> None:
    """Open the sink, write one batch of ``rows``, close it."""
    await sink.open()
    await sink.write(Batch(rows))
    await sink.close()


async def json_output(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """What JSON-lines mode prints for ``rows``, parsed line by line."""
    out = io.StringIO()
    await write(ConsoleSink(out, mode="json"), rows)
    text = out.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


async def tree_output(rows: list[tuple[Any, ...]], **options: Any) -> list[str]:
    """What tree mode prints for ``rows`` without colour, as lines."""
    out = io.StringIO()
    await write(ConsoleSink(out, mode="tree", color=False, **options), rows)
    return out.getvalue().splitlines()


class TtyStringIO(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class BrokenPipe(io.StringIO):
    """A stream whose reader has gone away."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class TestJsonLines:
    async def test_log_row_is_one_object_with_named_fields(self) -> None:
        """A log row becomes one object keyed by column, with readable ts, kind and level."""
        row = make_row(
            level=30,
            message="low stock",
            attrs=b'{"sku":"A-1","left":2,"tags":["x"]}',
            trace_id=TRACE,
            span_id=CHILD,
        )
        assert await json_output([row]) == [
            {
                "ts": "2023-11-14T22:13:20.123456Z",
                "ts_ns": T0,
                "kind": "log",
                "level": 30,
                "level_name": "warning",
                "trace_id": TRACE,
                "span_id": "ffffffffffffddde",
                "status": 0,
                "service": "checkout",
                "environment": "dev",
                "host": "box",
                "pid": 4242,
                "name": "app",
                "message": "low stock",
                "attrs": {"sku": "A-1", "left": 2, "tags": ["x"]},
                "location": "app.py:10",
            }
        ]

    async def test_span_row_has_w3c_ids_and_error_fields(self) -> None:
        """A failed span keeps its duration, W3C span and parent ids, and error columns."""
        (obj,) = await json_output([trace_rows()[0]])
        assert obj["kind"] == "span"
        assert obj["span_id"] == "0000000000003333"
        assert obj["parent_id"] == "0000000000001111"
        assert obj["duration_ns"] == 8_000_000
        assert obj["status"] == 2
        assert obj["level_name"] == "error"
        assert obj["error_type"] == "ValueError"
        assert obj["error_message"] == "card declined"
        assert obj["stack_trace"].endswith("ValueError: card declined")

    async def test_kinds_have_names(self) -> None:
        """Each kind number is written as its name."""
        rows = [make_row(kind=k) for k in (0, 1, 2, 3)]
        kinds = [obj["kind"] for obj in await json_output(rows)]
        assert kinds == ["log", "span_start", "span_end", "span"]

    async def test_nulls_are_omitted(self) -> None:
        """Columns holding None do not appear as keys."""
        row = make_row(environment=None, name=None, location=None)
        (obj,) = await json_output([row])
        for key in ("environment", "name", "location", "trace_id", "span_id", "attrs"):
            assert key not in obj

    async def test_level_without_standard_name(self) -> None:
        """A level logging has no name for is still named, from logging's own table."""
        (obj,) = await json_output([make_row(level=25)])
        assert obj["level"] == 25
        assert obj["level_name"] == "level 25"

    async def test_one_line_per_row_in_batch_order(self) -> None:
        """Rows are written in the order the batch holds them, one per line."""
        rows = [make_row(ts=T0 + i, message=f"m{i}") for i in (3, 1, 2)]
        assert [obj["message"] for obj in await json_output(rows)] == ["m3", "m1", "m2"]

    async def test_timestamp_before_epoch(self) -> None:
        """A negative ts is still an RFC 3339 time, truncated to microseconds."""
        (obj,) = await json_output([make_row(ts=-1_500)])
        assert obj["ts"] == "1969-12-31T23:59:59.999998Z"
        assert obj["ts_ns"] == -1_500

    def test_json_line_is_public_and_single_line(self) -> None:
        """json_line renders one row as one line of JSON without a newline."""
        line = json_line(make_row(message="a\nb"))
        assert b"\n" not in line
        assert orjson.loads(line)["message"] == "a\nb"


class TestTreeMode:
    async def test_nesting_and_order(self) -> None:
        """Spans sit under their parent, logs under their span, siblings in start order."""
        lines = await tree_output(trace_rows())
        assert lines[0].startswith(f"trace {TRACE} checkout ")
        assert lines[1:] == [
            "└─ GET /orders 15.2ms ✓ http.method=GET",
            '   ├─ db.query 3.1ms ✓ sql="select 1"',
            "   │  └─ INFO app.db fetched rows=3",
            "   ├─ charge 8.0ms ✗ ValueError: card declined",
            "   └─ worker … running",
        ]

    async def test_error_span_shows_type_and_message(self) -> None:
        """A failed span shows ``error_type: error_message`` after its failure mark."""
        lines = await tree_output([trace_rows()[0]])
        assert lines[1] == "└─ charge 8.0ms ✗ ValueError: card declined"

    async def test_error_status_message_shows_without_an_exception(self) -> None:
        """A span failed by its status alone (``set_status("error", msg)``, a 5xx) shows the
        status message after its failure mark; JSON lines name its kind as the API does."""
        row = span_row(9, None, "GET /x", 0, level=40, status=2, status_message="HTTP 503")
        lines = await tree_output([row])
        assert lines[1] == "└─ GET /x 1.5ms ✗ HTTP 503"
        (obj,) = await json_output([span_row(9, None, "GET /x", 0, span_kind=2)])
        assert obj["span_kind"] == "server"

    async def test_running_span_marker(self) -> None:
        """A span start row with no end yet is marked as running."""
        lines = await tree_output([span_row(RUNNING, None, "worker", 0, kind=1, status=0)])
        assert lines[1] == "└─ worker … running"

    async def test_untraced_logs_come_first_in_time_order(self) -> None:
        """Logs with no trace print first, oldest first, then each trace."""
        rows = [
            span_row(ROOT, None, "job", 0),
            make_row(ts=T0 + 20, message="second"),
            make_row(ts=T0 + 10, level=10, message="first"),
        ]
        lines = await tree_output(rows)
        assert lines[0].endswith(" DEBUG app first")
        assert lines[1].endswith(" INFO app second")
        assert lines[2].startswith(f"trace {TRACE}")
        assert lines[3] == "└─ job 1.5ms ✓"

    async def test_traces_grouped_and_ordered_by_first_row(self) -> None:
        """Rows of two interleaved traces print as two trees, the earlier trace first."""
        rows = [
            span_row(2, None, "late", 50, trace_id=OTHER_TRACE),
            span_row(1, None, "early-a", 10),
            span_row(3, None, "early-b", 60),
        ]
        lines = await tree_output(rows)
        assert [line.split()[0:2] for line in lines if line.startswith("trace")] == [
            ["trace", TRACE],
            ["trace", OTHER_TRACE],
        ]
        assert lines[1:3] == ["├─ early-a 1.5ms ✓", "└─ early-b 1.5ms ✓"]
        assert lines[4] == "└─ late 1.5ms ✓"

    async def test_parent_outside_batch_makes_a_root(self) -> None:
        """A span whose parent was flushed earlier prints as a root of its trace."""
        lines = await tree_output([span_row(CHILD, ROOT, "db.query", 0)])
        assert lines[1] == "└─ db.query 1.5ms ✓"

    async def test_start_and_end_rows_of_one_span_print_once(self) -> None:
        """A span started and ended within the batch prints once, with its duration."""
        rows = [
            span_row(ROOT, None, "job", 0, kind=1, status=0, duration_ns=None),
            make_row(ts=T0 + 5, trace_id=TRACE, span_id=ROOT, message="inside"),
            span_row(ROOT, None, "job", 0, kind=2, duration_ns=2_000),
        ]
        lines = await tree_output(rows)
        assert lines[1:] == ["└─ job 2.0µs ✓", "   └─ INFO app inside"]

    async def test_error_log_shows_stack_under_it(self) -> None:
        """An error log shows its error in line and its stack trace indented below."""
        row = make_row(
            trace_id=TRACE,
            level=40,
            message="failed\nsecond line",
            error_type="KeyError",
            error_message="'x'",
            stack_trace="Traceback (most recent call last):\nKeyError: 'x'\n",
        )
        lines = await tree_output([row])
        assert lines[1:] == [
            "└─ ERROR app failed KeyError: 'x'",
            "      second line",
            "      Traceback (most recent call last):",
            "      KeyError: 'x'",
        ]

    async def test_attrs_can_be_hidden(self) -> None:
        """show_attrs=False leaves attributes out."""
        lines = await tree_output([trace_rows()[-1]], show_attrs=False)
        assert lines[1] == "└─ GET /orders 15.2ms ✓"

    async def test_control_characters_are_escaped(self) -> None:
        """Escape sequences in a message cannot restyle the terminal."""
        lines = await tree_output([make_row(message="\x1b[31mred\x07")])
        assert lines[0].endswith(" INFO app \\x1b[31mred\\x07")

    async def test_color_emits_ansi_styles(self) -> None:
        """color=True styles the output even on a stream that is not a terminal."""
        out = io.StringIO()
        await write(ConsoleSink(out, mode="tree", color=True), trace_rows())
        assert "\x1b[" in out.getvalue()

    async def test_parent_cycle_terminates(self) -> None:
        """Spans naming each other as parents still print, each once."""
        rows = [span_row(1, 2, "a", 0), span_row(2, 1, "b", 10)]
        lines = await tree_output(rows)
        assert sum("a 1.5ms" in line for line in lines) == 1
        assert sum("b 1.5ms" in line for line in lines) == 1

    async def test_deep_nesting_does_not_recurse(self) -> None:
        """Spans nested past the interpreter's recursion limit still print."""
        depth = sys.getrecursionlimit() + 100
        rows = [span_row(i + 1, i or None, f"s{i}", i) for i in range(depth)]
        lines = await tree_output(rows)
        assert len(lines) == depth + 1
        assert lines[-1].endswith(f"└─ s{depth - 1} 1.5ms ✓")


class TestDurations:
    @pytest.mark.parametrize(
        ("ns", "text"),
        [(850, "850ns"), (1_500, "1.5µs"), (15_200_000, "15.2ms"), (2_345_000_000, "2.35s")],
    )
    def test_units(self, ns: int, text: str) -> None:
        """A duration is shown in the largest unit under which it is at least 1."""
        assert format_duration(ns) == text


class TestAutoMode:
    async def test_non_tty_gets_json_lines(self) -> None:
        """On a stream that is not a terminal, auto mode writes JSON lines."""
        out = io.StringIO()
        await write(ConsoleSink(out), trace_rows())
        assert len([orjson.loads(line) for line in out.getvalue().splitlines()]) == 5

    async def test_tty_gets_a_tree(self) -> None:
        """On a terminal, auto mode draws trees."""
        out = TtyStringIO()
        await write(ConsoleSink(out, color=False), trace_rows())
        assert out.getvalue().startswith(f"trace {TRACE}")

    async def test_default_stream_is_stderr_at_write_time(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With no stream given, output goes to whatever sys.stderr is when writing."""
        sink = ConsoleSink(mode="json")
        await write(sink, [make_row(message="to stderr")])
        captured = capsys.readouterr()
        assert captured.out == ""
        assert orjson.loads(captured.err)["message"] == "to stderr"

    async def test_auto_without_rich_falls_back_to_json(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without rich, auto mode on a terminal writes JSON lines instead of failing."""
        for module in ("rich", "rich.console", "rich.text"):
            monkeypatch.setitem(sys.modules, module, None)
        out = TtyStringIO()
        await write(ConsoleSink(out), [make_row(message="plain")])
        assert orjson.loads(out.getvalue())["message"] == "plain"


class TestBrokenStream:
    @pytest.mark.parametrize("mode", ["json", "tree"])
    async def test_closed_stream_counts_an_error(self, mode: str) -> None:
        """Writing to a closed stream does not raise; the failed write is counted."""
        out = io.StringIO()
        out.close()
        sink = ConsoleSink(out, mode=mode, color=False)
        await sink.open()
        await sink.write(Batch(trace_rows()))
        assert sink.errors == 1
        await sink.write(Batch(trace_rows()))
        assert sink.errors == 2

    async def test_broken_pipe_counts_an_error(self) -> None:
        """A reader that went away is counted, not raised."""
        sink = ConsoleSink(BrokenPipe(), mode="tree", color=False)
        await sink.write(Batch(trace_rows()))
        assert sink.errors == 1

    async def test_close_leaves_the_stream_open(self) -> None:
        """The sink does not own its stream, so close() keeps it usable."""
        out = io.StringIO()
        await write(ConsoleSink(out, mode="json"), [make_row()])
        assert not out.closed

    async def test_empty_batch_writes_nothing(self) -> None:
        """An empty batch prints nothing at all."""
        out = io.StringIO()
        await write(ConsoleSink(out, mode="tree", color=False), [])
        assert out.getvalue() == ""


ODD_ROWS = [
    make_row(attrs=b"{not json", message="bad attrs"),
    make_row(attrs=b"\xff\xfe", message="binary attrs"),
    make_row(attrs=b"[1, 2]", message="list attrs"),
    make_row(name=None, kind=3, trace_id=TRACE, span_id=1, message=None),
    make_row(ts=10**30, span_id=10**30, parent_id=-(10**25), duration_ns=10**40, pid=10**20),
    make_row(ts="yesterday", level="loud", kind=9, status=7, trace_id=b"\x01" * 16),
    make_row(message="lone \ud800 surrogate\x00nul", attrs=b'{"k":"\\u0000"}'),
    make_row(trace_id=TRACE, span_id=[1], parent_id={"a": 1}, kind=3, duration_ns=float("nan")),
    (T0, 0, 20),
]


class TestOddValues:
    async def test_json_mode_never_raises(self) -> None:
        """Odd values in every column still give one parseable JSON object per row."""
        objs = await json_output(ODD_ROWS)
        assert len(objs) == len(ODD_ROWS)
        assert objs[0]["attrs"] == "{not json"
        assert objs[1]["attrs"] == "\ufffd\ufffd"
        assert objs[2]["attrs"] == [1, 2]
        assert "name" not in objs[3]
        assert objs[4]["ts_ns"] == str(10**30)
        assert "ts" not in objs[4]
        assert objs[4]["span_id"] == str(10**30)
        assert objs[5]["trace_id"] == "01" * 16
        assert objs[5]["kind"] == 9
        assert "\ud800" not in objs[6]["message"]
        assert objs[8] == {
            "ts": "2023-11-14T22:13:20.123456Z",
            "ts_ns": T0,
            "kind": "log",
            "level": 20,
            "level_name": "info",
        }

    async def test_tree_mode_never_raises(self) -> None:
        """The same odd rows print in tree mode, one line or more each."""
        out = io.StringIO()
        sink = ConsoleSink(out, mode="tree", color=False)
        await write(sink, ODD_ROWS)
        text = out.getvalue()
        assert sink.errors == 0
        assert 'bad attrs attrs="{not json"' in text
        assert "─ ?\n" in text  # a span without a name
        assert "\ud800" not in text and "\x00" not in text


class TestConfiguration:
    def test_is_a_sink(self) -> None:
        """ConsoleSink satisfies the Sink protocol and is what 'console' resolves to."""
        assert isinstance(ConsoleSink(), Sink)
        assert ConsoleSink.name == "console"
        assert isinstance(resolve("console"), ConsoleSink)

    def test_unknown_mode_is_refused(self) -> None:
        """A mode other than auto, tree or json is a ConfigError naming the field."""
        with pytest.raises(ConfigError, match="mode='pretty'"):
            ConsoleSink(mode="pretty")

    async def test_tree_without_rich_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Tree mode without rich fails at open with the extra to install."""
        for module in ("rich", "rich.console", "rich.text"):
            monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(MissingExtraError, match=r"atrace\[cli\]"):
            await ConsoleSink(mode="tree").open()

    def test_all_names_exist(self) -> None:
        """Every name in __all__ is defined by the module."""
        assert all(hasattr(console_module, name) for name in console_module.__all__)

    def test_import_does_not_load_rich(self) -> None:
        """Importing atrace and the console sink leaves rich unimported until a tree is drawn."""
        code = "import sys, atrace, atrace.sinks.console; print('rich' in sys.modules)"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "False"
