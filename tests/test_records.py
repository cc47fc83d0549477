"""The data model: the stored numbers, the column positions, the row builders, one name a number."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import atrace
from atrace import _records as records
from atrace._formats.wire import decode_batch, encode_batch
from atrace._pipeline.encode import Encoder
from atrace._records import (
    COLUMNS,
    KIND_NAMES,
    LEVELS,
    MAX_LEVEL,
    SPAN_KIND_NAMES,
    STATUS_NAMES,
    Batch,
    Kind,
    Level,
    SpanKind,
    Status,
    broken_row,
    level_name,
    row_dict,
)
from atrace.collector._query import record_json
from atrace.errors import WireError
from atrace.sinks.console import ConsoleSink, json_line
from atrace.sinks.postgres import broken_row as postgres_broken_row
from atrace.testing import Record, capture

TRACE = "0190f1c2a3b4c5d6e7f8091a2b3c4d5e"
T0 = 1_700_000_000_123_456_789
# The standard numbers and some without a name of their own.
SHOWN_LEVELS = (0, 10, 20, 30, 40, 50, 25, 44, 100)


def make_row(**fields: Any) -> tuple[Any, ...]:
    """A valid log row in COLUMNS order, with ``fields`` replaced."""
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(ts=T0, kind=0, level=20, status=0, service="svc")
    values.update(fields)
    return tuple(values[c] for c in COLUMNS)


class TestStorageContract:
    def test_kind_numbers(self) -> None:
        """Kinds are stored as 0 log, 1 span start, 2 span end, 3 complete span."""
        assert {k.name: k.value for k in Kind} == {
            "LOG": 0,
            "SPAN_START": 1,
            "SPAN_END": 2,
            "SPAN": 3,
        }

    def test_status_numbers(self) -> None:
        """Statuses are stored as 0 unset, 1 ok, 2 error."""
        assert {s.name: s.value for s in Status} == {"UNSET": 0, "OK": 1, "ERROR": 2}

    def test_span_kind_numbers(self) -> None:
        """Span kinds are stored as OpenTelemetry's protocol numbers, named in lower case."""
        assert {k.name: k.value for k in SpanKind} == {
            "UNSPECIFIED": 0,
            "INTERNAL": 1,
            "SERVER": 2,
            "CLIENT": 3,
            "PRODUCER": 4,
            "CONSUMER": 5,
        }
        assert SPAN_KIND_NAMES == {
            0: "unspecified",
            1: "internal",
            2: "server",
            3: "client",
            4: "producer",
            5: "consumer",
        }
        assert atrace.SpanKind is SpanKind

    def test_levels_are_python_logging_numbers(self) -> None:
        """Every named level is the number Python's logging gives the same name."""
        assert [lv.name for lv in Level] == [
            "NOTSET",
            "DEBUG",
            "INFO",
            "WARNING",
            "ERROR",
            "CRITICAL",
        ]
        for lv in Level:
            assert logging.getLevelName(lv.name) == lv.value

    def test_emitted_records_store_the_numbers_as_plain_ints(self) -> None:
        """Logs and spans, as the emit path writes them, carry these numbers and no enum member."""
        with capture() as cap:
            atrace.warning("careful")
            with atrace.span("fine"):
                pass
            with pytest.raises(ValueError), atrace.span("broken"):
                raise ValueError("no")
        log = cap.logs[0]
        fine = cap.span("fine")
        broken = cap.span("broken")
        assert (log.kind, log.level, log.status) == (Kind.LOG, Level.WARNING, Status.UNSET)
        # A span that did not fail, with no status set, stays unset (OpenTelemetry's rule).
        assert (fine.kind, fine.level, fine.status) == (Kind.SPAN, Level.INFO, Status.UNSET)
        assert (broken.kind, broken.level, broken.status) == (Kind.SPAN, Level.ERROR, Status.ERROR)
        for rec in (log, fine, broken):
            assert {type(rec.kind), type(rec.level), type(rec.status)} == {int}
        # A log has no span kind; a span's is a plain int too.
        assert log.span_kind is None and log.trace_flags is None
        assert (fine.span_kind, broken.span_kind) == (SpanKind.INTERNAL, SpanKind.INTERNAL)
        for rec in (fine, broken):
            assert type(rec.span_kind) is int and type(rec.trace_flags) is int

    def test_status_names_are_those_spans_accept(self) -> None:
        """``set_status`` takes each status name of the table and stores its number."""
        with capture():
            for number, name in STATUS_NAMES.items():
                with atrace.span("s") as sp:
                    sp.set_status(name)
                    assert sp.status == number

    async def test_level_names_are_those_log_calls_accept(self) -> None:
        """A log call given each level name of the table stores its number."""
        with capture() as cap:
            for name in LEVELS:
                await atrace.amit(name, level=name)
        assert {r.message: r.level for r in cap.logs} == LEVELS

    @pytest.mark.parametrize(
        ("column", "good", "bad"),
        [
            ("kind", max(Kind), max(Kind) + 1),
            ("status", max(Status), max(Status) + 1),
            ("level", MAX_LEVEL, MAX_LEVEL + 1),
            ("span_kind", max(SpanKind), max(SpanKind) + 1),
            ("trace_flags", 255, 256),
        ],
    )
    def test_wire_format_takes_exactly_the_stored_range(
        self, column: str, good: int, bad: int
    ) -> None:
        """The batch format accepts the highest stored number of a column and refuses the next."""
        _, rows = decode_batch(
            encode_batch(Batch([make_row(**{column: good})])), "application/msgpack"
        )
        assert rows[0][COLUMNS.index(column)] == good
        with pytest.raises(WireError, match=column):
            decode_batch(encode_batch(Batch([make_row(**{column: bad})])), "application/msgpack")


class TestColumns:
    def test_each_index_names_its_column(self) -> None:
        """The index constant of every column is that column's position in COLUMNS."""
        assert len(COLUMNS) == 26
        # Schema 5 added four columns after location, schema 6 two more, schema 7 one.
        assert COLUMNS[18:] == (
            "location",
            "span_kind",
            "trace_state",
            "trace_flags",
            "status_message",
            "links",
            "otlp",
            "resource_id",
        )
        for position, name in enumerate(COLUMNS):
            assert getattr(records, name.upper()) == position
            assert name.upper() in records.__all__

    def test_row_dict_keys_values_by_column(self) -> None:
        """row_dict gives every column of a row under its name."""
        row = make_row(message="hello", pid=7)
        got = row_dict(row)
        assert list(got) == list(COLUMNS)
        assert got["message"] == "hello" and got["pid"] == 7 and got["kind"] == 0

    def test_row_dict_refuses_a_row_of_the_wrong_width(self) -> None:
        """A row one column short is an error, not a dict with a column missing."""
        with pytest.raises(ValueError):
            row_dict(make_row()[:-1])


class TestBrokenRow:
    def test_columns(self) -> None:
        """The stand-in row is an error log carrying the failure and nothing else."""
        row = broken_row(
            T0,
            "ValueError",
            "bad value",
            name="atrace.test",
            message="what was lost",
            service="svc",
            environment="dev",
            host="box",
            pid=7,
        )
        assert row_dict(row) == {
            **dict.fromkeys(COLUMNS),
            "ts": T0,
            "kind": Kind.LOG,
            "level": Level.ERROR,
            "status": Status.UNSET,
            "service": "svc",
            "environment": "dev",
            "host": "box",
            "pid": 7,
            "name": "atrace.test",
            "message": "what was lost",
            "error_type": "ValueError",
            "error_message": "bad value",
        }
        assert {type(row[records.KIND]), type(row[records.LEVEL])} == {int}

    def test_time_defaults_to_now(self) -> None:
        """Without a time of its own, the row is stamped when it is built."""
        before = time.time_ns()
        row = broken_row(None, "E", "m", name="n", message="m", service="s")
        assert row[records.TS] >= before

    def test_unencodable_record_becomes_an_error_row(self) -> None:
        """A record the encoder cannot read lands as an error row saying what it was and why."""
        encoder = Encoder(service="shop", environment="dev", host="box", pid=42)
        (row,) = encoder.rows([(0, T0, "three fields")])
        got = row_dict(row)
        assert (got["ts"], got["kind"], got["level"], got["status"]) == (T0, 0, 40, 0)
        assert (got["service"], got["environment"], got["host"], got["pid"]) == (
            "shop",
            "dev",
            "box",
            42,
        )
        assert got["name"] == "atrace.encode"
        assert got["message"] == "unencodable record: (0, 1700000000123456789, 'three fields')"
        assert got["error_type"] and got["error_message"]
        assert got["trace_id"] is got["attrs"] is got["stack_trace"] is got["location"] is None

    def test_unwritable_row_becomes_an_error_row(self) -> None:
        """A row COPY refuses is replaced by an error row keeping its time and service."""
        bad = make_row(ts=T0, service="billing", span_id=2**70)
        got = row_dict(postgres_broken_row(bad, OverflowError("int too big")))
        assert (got["ts"], got["kind"], got["level"], got["status"]) == (T0, 0, 40, 0)
        assert got["service"] == "billing" and got["span_id"] is None
        assert got["name"] == "atrace"
        assert got["message"] == "atrace: a row could not be written"
        assert (got["error_type"], got["error_message"]) == ("OverflowError", "int too big")


class TestNames:
    def test_level_names(self) -> None:
        """Named levels read as their names; other numbers as logging says them, lower case."""
        assert [level_name(n) for n in (0, 10, 20, 30, 40, 50)] == [
            "notset",
            "debug",
            "info",
            "warning",
            "error",
            "critical",
        ]
        assert level_name(25) == "level 25"

    def test_level_registered_with_logging_keeps_its_name(self) -> None:
        """A level added with logging.addLevelName (as uvicorn adds TRACE) is named so."""
        logging.addLevelName(5, "TRACE")
        assert level_name(5) == "trace"

    def test_kind_names_are_the_same_in_the_api_the_console_and_testing(self) -> None:
        """The query API's JSON, the console's JSON lines and testing's records name kinds alike."""
        assert KIND_NAMES == {0: "log", 1: "span_start", 2: "span_end", 3: "span"}
        for kind, name in KIND_NAMES.items():
            row = make_row(kind=kind, trace_id=TRACE, span_id=1, name="op")
            assert record_json(row)["kind"] == name
            assert orjson.loads(json_line(row))["kind"] == name
            assert str(Record.from_row(row)).startswith(f"{name} 'op'")

    @pytest.mark.parametrize("level", SHOWN_LEVELS)
    def test_console_prints_the_table_names(self, level: int) -> None:
        """The console's JSON lines and its tree name a level from the one table."""
        row = make_row(level=level, message="hello")
        assert orjson.loads(json_line(row))["level_name"] == level_name(level)
        text = ConsoleSink(mode="tree", color=False).render_tree([row])
        assert f" {level_name(level).upper()} hello" in text

    async def test_cli_and_console_print_the_same_level_names(
        self, pg_schema: tuple[str, str]
    ) -> None:
        """`atrace tail` and the console sink print the same name for each level number."""
        dsn, schema = pg_schema
        atrace.configure(service="names", sink=dsn, schema=schema, flush_interval=0.05)
        for level in SHOWN_LEVELS:
            await atrace.amit(f"level-{level}", level=level)
        assert await atrace.aflush(timeout=30)
        await atrace.ashutdown()
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("atrace")),
            *("tail", "-n", "100", "--dsn", dsn, "--schema", schema),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        # A line is "HH:MM:SS.mmm LEVEL service message": the level is what lies in between.
        cli = {}
        for line in out.decode().splitlines():
            shown, _, message = line.split(" ", 1)[1].partition(" names ")
            cli[message.split()[0]] = shown.strip()
        console = ConsoleSink(io.StringIO(), mode="tree", color=False)
        for level in SHOWN_LEVELS:
            text = console.render_tree([make_row(level=level, name=None, message="m")])
            shown = text.split(" ", 1)[1].rsplit(" m", 1)[0]
            assert cli[f"level-{level}"] == shown == level_name(level).upper()
