"""atrace's wire format: encode_batch and the collector's strict decode_batch."""

from __future__ import annotations

import ast
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from atrace._formats import bounds, wire
from atrace._formats.wire import CONTENT_TYPES, decode_batch, encode_batch
from atrace._pipeline.encode import Encoder
from atrace._records import COLUMNS
from atrace.errors import WireError
from atrace.sinks import Batch

FORMATS = ("msgpack", "json")
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
NOW = time.time_ns()
TRACE = "01a208e9d00773c265f2f08d84670389"
SQL = "'; DROP TABLE atrace.records; -- Robert'); DELETE FROM atrace.batches WHERE 1=1;--"
ATTRS_I = COLUMNS.index("attrs")
MESSAGE_I = COLUMNS.index("message")
LINKS_I = COLUMNS.index("links")
OTLP_I = COLUMNS.index("otlp")
N = len(COLUMNS)


def row(**values: Any) -> tuple[Any, ...]:
    """A valid row in COLUMNS order, with some values replaced."""
    base: dict[str, Any] = dict.fromkeys(COLUMNS)
    base.update(ts=NOW, kind=0, level=20, status=0, service="svc")
    base.update(values)
    return tuple(base[c] for c in COLUMNS)


def body(rows: Any, fmt: str = "msgpack", *, columns: Any = COLUMNS, **envelope: Any) -> bytes:
    """A request body built by hand, so that tests can break any part of it."""
    if fmt == "msgpack":
        doc = {"v": 1, "batch": uuid.UUID(int=7).bytes, "columns": columns, "rows": rows}
        doc.update(envelope)
        return bytes(msgpack.packb(doc, use_bin_type=True))
    doc = {"v": 1, "batch": uuid.UUID(int=7).hex, "columns": columns, "rows": rows}
    doc.update(envelope)
    return orjson.dumps(doc, default=wire._fragment)


def decode(data: bytes, fmt: str = "msgpack", **kw: Any) -> list[tuple[Any, ...]]:
    """The rows of a body, via decode_batch."""
    return decode_batch(data, CONTENT_TYPES[fmt], **kw)[1]


def encoder_rows() -> list[tuple[Any, ...]]:
    """Rows built by atrace's own encoder: logs, spans, errors, unicode, attributes."""
    enc = Encoder(service="checkout", environment="prod", host="web-1", pid=4242)
    try:
        raise ValueError("card declined: ñ")
    except ValueError as exc:
        err = exc
    records = [
        (0, NOW, 20, TRACE, 5, None, None, 0, None, "app", "placed ✓ 注文", {"n": 1}, None, None),
        (3, NOW + 1, 40, TRACE, I64_MIN, I64_MAX, 12_345, 2, None, "charge", None,
         {"amount": 12.5, "tags": ["a", "b"], "nested": {"deep": [1, {"x": None}]}}, err,
         ("app/pay.py", 42)),
        (1, NOW + 2, 20, None, None, None, None, 0, "other-svc", "GET /", None, None, None, None),
    ]  # fmt: skip
    return enc.rows(records)


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_encoder_rows_round_trip(self, fmt: str) -> None:
        """Rows from atrace's encoder come back equal, as tuples, with the batch id."""
        rows = encoder_rows()
        batch = Batch(rows)
        batch_id, out = decode_batch(encode_batch(batch, fmt), CONTENT_TYPES[fmt])
        assert batch_id == batch.id
        assert out == rows
        assert all(type(r) is tuple for r in out)

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_every_column_at_its_edges(self, fmt: str) -> None:
        """Nulls, int64 edges, the widest pid and duration, unicode and raw attrs bytes survive."""
        attrs = orjson.dumps({"big": (1 << 64) - 1, "neg": I64_MIN, "uni": "ü😀", "f": 1.5e-300})
        rows = [
            row(
                ts=wire.TS_MIN_NS,
                kind=3,
                level=100,
                trace_id="f" * 32,
                span_id=I64_MIN,
                parent_id=I64_MAX,
                duration_ns=I64_MAX,
                status=2,
                service="s😀",
                environment="é",
                host="h",
                pid=(1 << 31) - 1,
                name="名前",
                message="line1\nline2\ttab",
                attrs=attrs,
                error_type="E",
                error_message="m",
                stack_trace="Traceback...",
                location="a.py:1",
            ),
            row(ts=wire.TS_MAX_NS, span_id=I64_MAX, parent_id=I64_MIN, duration_ns=0, pid=0),
            row(),  # every nullable column null
        ]
        out = decode(body(rows, fmt), fmt)
        assert out == rows
        assert out[0][ATTRS_I] == attrs  # bytes, byte for byte
        assert orjson.loads(out[0][ATTRS_I])["big"] == (1 << 64) - 1

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_sql_looking_strings_are_plain_data(self, fmt: str) -> None:
        """Text that looks like SQL round-trips verbatim, in text columns and attributes."""
        attrs = orjson.dumps({SQL: SQL, "q": "SELECT * FROM pg_shadow"})
        rows = [row(name=SQL, message=SQL, service=SQL[:200], attrs=attrs, location=SQL)]
        out = decode(body(rows, fmt), fmt)
        assert out == rows
        assert orjson.loads(out[0][ATTRS_I])[SQL] == SQL

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_empty_batch(self, fmt: str) -> None:
        """A batch without rows decodes to no rows and keeps its id."""
        batch = Batch([])
        assert decode_batch(encode_batch(batch, fmt), CONTENT_TYPES[fmt]) == (batch.id, [])

    def test_json_body_embeds_attrs_unparsed(self) -> None:
        """In JSON, attrs are objects inside the document and the batch id is hex."""
        batch = Batch([row(attrs=b'{"a":[1,2]}')])
        doc = orjson.loads(encode_batch(batch, "json"))
        assert doc["batch"] == batch.id.hex and doc["columns"] == list(COLUMNS)
        assert doc["rows"][0][ATTRS_I] == {"a": [1, 2]}

    def test_msgpack_body_carries_bin(self) -> None:
        """In msgpack the batch id is 16 raw bytes and attrs are the JSON bytes as bin."""
        batch = Batch([row(attrs=b'{"a":1}')])
        doc = msgpack.unpackb(encode_batch(batch), raw=False)
        assert doc["v"] == 1 and doc["batch"] == batch.id.bytes
        assert doc["rows"][0][ATTRS_I] == b'{"a":1}'

    def test_unknown_format_is_refused(self) -> None:
        """encode_batch names the formats it knows."""
        with pytest.raises(ValueError, match="msgpack"):
            encode_batch(Batch([row()]), "xml")

    @pytest.mark.parametrize(
        "content_type",
        ["application/msgpack", "application/x-msgpack", "Application/MsgPack; charset=binary"],
    )
    def test_msgpack_media_types(self, content_type: str) -> None:
        """The usual msgpack media types and parameters are accepted."""
        assert decode_batch(body([row()]), content_type)[1] == [row()]


class TestColumns:
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_subset_in_any_order(self, fmt: str) -> None:
        """Columns may come in any order and be left out: status reads 0, the rest null."""
        columns = ["service", "message", "level", "kind", "ts"]
        out = decode(body([["svc", "hi", 30, 0, NOW]], fmt, columns=columns), fmt)
        assert out == [row(service="svc", message="hi", level=30, ts=NOW)]

    @pytest.mark.parametrize(
        ("columns", "text"),
        [
            ([*COLUMNS, "project"], "unknown column 'project'"),
            (["ts", "kind", "level", "service", "ts"], "'ts' given twice"),
            (["ts", "kind", "level"], "required column(s) missing: service"),
            (["ts", "kind", "level", "service", 5], "unknown column 5"),
            ("ts,kind", "expected an array of column names"),
        ],
    )
    def test_bad_layouts_are_refused(self, columns: Any, text: str) -> None:
        """An unknown, repeated or missing required column refuses the batch."""
        with pytest.raises(WireError) as err:
            decode(body([], columns=columns))
        assert err.value.status == 400 and text in str(err.value)


def bad_cases() -> list[tuple[str, Any, str]]:
    """(column, value, what the message says) for values each column must refuse."""
    return [
        ("ts", 1.7e18, "expected an integer"),
        ("ts", "1700000000000000000", "expected an integer"),
        ("ts", None, "expected an integer"),
        ("ts", 1_700_000_000, "from 946684800000000000"),  # seconds, not nanoseconds
        ("ts", wire.TS_MAX_NS + 1, "to 7258118400000000000"),
        ("kind", 4, "from 0 to 3"),
        ("kind", -1, "from 0 to 3"),
        ("kind", True, "expected an integer"),
        ("level", 101, "from 0 to 100"),
        ("level", "20", "expected an integer"),
        ("status", 3, "from 0 to 2"),
        ("status", None, "expected an integer"),
        ("trace_id", TRACE.upper(), "32 lowercase hex"),
        ("trace_id", TRACE[:31], "32 lowercase hex"),
        ("trace_id", TRACE[:31] + "g", "32 lowercase hex"),
        ("trace_id", "é" * 32, "32 lowercase hex"),
        ("trace_id", 5, "a string or null"),
        ("span_id", 1 << 63, "to 9223372036854775807"),
        ("span_id", 1.0, "an integer or null"),
        ("parent_id", "5", "an integer or null"),
        ("duration_ns", -1, "from 0 to"),
        ("pid", -1, "from 0 to 2147483647"),
        ("pid", 1 << 31, "from 0 to 2147483647"),
        ("pid", False, "an integer or null"),
        ("service", None, "expected a string"),
        ("service", 5, "expected a string"),
        ("environment", 5, "a string or null"),
        ("host", b"web", "a string or null"),
        ("name", ["a"], "a string or null"),
        ("message", {"a": 1}, "a string or null"),
        ("error_type", 1, "a string or null"),
        ("stack_trace", True, "a string or null"),
        ("location", 1.5, "a string or null"),
        ("attrs", b"[1, 2]", "a JSON object"),
        ("attrs", b'"text"', "a JSON object"),
        ("attrs", b'{"a": ', "invalid JSON"),
        ("attrs", b"", "invalid JSON"),
        ("attrs", b'{"a": 1} {"b": 2}', "invalid JSON"),
        ("attrs", b'{"a": "\\ud800"}', "invalid JSON"),
        ("attrs", '{"a": 1}', "as bytes (bin)"),
    ]


class TestRowValidation:
    @pytest.mark.parametrize(("column", "value", "text"), bad_cases())
    def test_bad_value_names_row_and_column(self, column: str, value: Any, text: str) -> None:
        """A value of the wrong type or range refuses the batch, naming its row and column."""
        rows = [row(), row(), row(**{column: value}), row()]
        with pytest.raises(WireError) as err:
            decode(body(rows))
        message = str(err.value)
        assert err.value.status == 400
        assert f"rows[2], column {column!r}" in message and text in message, message

    @pytest.mark.parametrize(
        ("column", "value", "text"),
        [
            ("attrs", [1], "a JSON object or null"),
            ("attrs", "{}", "a JSON object or null"),
            ("ts", 1.5e18, "expected an integer"),
            ("span_id", 1 << 63, "to 9223372036854775807"),
            ("level", (1 << 64) - 1, "from 0 to 100"),
        ],
    )
    def test_bad_value_in_json(self, column: str, value: Any, text: str) -> None:
        """JSON bodies are held to the same rules (attrs must be objects there)."""
        rows = [row(), row(**{column: value})]
        with pytest.raises(WireError) as err:
            decode(body(rows, "json"), "json")
        assert f"rows[1], column {column!r}" in str(err.value) and text in str(err.value)

    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize(
        ("bad_row", "text"),
        [
            ({"ts": 1}, "rows[1]: expected an array, got dict"),
            ("abc", "rows[1]: expected an array, got str"),
            (None, "rows[1]: expected an array, got NoneType"),
            (list(row())[:5], f"rows[1]: expected {N} values (one per column), got 5"),
            ([*row(), None], f"rows[1]: expected {N} values (one per column), got {N + 1}"),
        ],
    )
    def test_malformed_rows(self, fmt: str, bad_row: Any, text: str) -> None:
        """A row that is not an array, or has the wrong length, refuses the batch."""
        with pytest.raises(WireError) as err:
            decode(body([row(), bad_row, row()], fmt), fmt)
        assert err.value.status == 400 and text in str(err.value)

    def test_every_row_of_the_wrong_length(self) -> None:
        """Rows all one value short are caught although they agree with each other."""
        with pytest.raises(WireError, match=rf"rows\[0\]: expected {N} values"):
            decode(body([row()[:-1]] * 3))

    def test_lone_surrogate_in_json_text(self) -> None:
        """A JSON string holding half a surrogate pair is malformed input."""
        data = body([row(message="PLACEHOLDER")], "json").replace(b"PLACEHOLDER", b"\\udc00")
        with pytest.raises(WireError) as err:
            decode(data, "json")
        assert err.value.status == 400


class TestSanitising:
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_nul_characters_are_replaced(self, fmt: str) -> None:
        """NUL characters, which PostgreSQL refuses, become U+FFFD in text and in attributes."""
        attrs = orjson.dumps({"k\x00": "v\x00v", "ok": [1, "\x00"]})
        out = decode(body([row(message="a\x00b", name="\x00", attrs=attrs)], fmt), fmt)
        assert out[0][MESSAGE_I] == "a\ufffdb" and out[0][COLUMNS.index("name")] == "\ufffd"
        assert b"\\u0000" not in out[0][ATTRS_I]
        assert orjson.loads(out[0][ATTRS_I]) == {"k\ufffd": "v\ufffdv", "ok": [1, "\ufffd"]}

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_long_text_is_cut(self, fmt: str) -> None:
        """Text over its column's limit is truncated with a marker; other rows are untouched."""
        long = "x" * 40_000
        out = decode(body([row(message=long), row(message="short")], fmt), fmt)
        assert out[0][MESSAGE_I].startswith("x" * 32_768)
        assert out[0][MESSAGE_I].endswith("[truncated 7232 chars]")
        assert out[1][MESSAGE_I] == "short"

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_ten_thousand_character_key(self, fmt: str) -> None:
        """Attribute names over 256 characters are cut; values, and keys inside values, stay."""
        key = "k" * 10_000
        inner = {"n" * 300: [{key: "v"}]}
        attrs = orjson.dumps({key: 1, "short": inner, "keep": "x" * 1000})
        out = decode(body([row(attrs=attrs), row(attrs=b'{"a":1}')], fmt), fmt)
        doc = orjson.loads(out[0][ATTRS_I])
        assert doc == {"k" * 256: 1, "short": inner, "keep": "x" * 1000}
        assert out[1][ATTRS_I] == b'{"a":1}'

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_long_names_with_nul_in_one_document(self, fmt: str) -> None:
        """One document breaking two rules is repaired for both; its neighbours stay as sent."""
        attrs = orjson.dumps({"a" * 300: "x\x00y"})
        plain = orjson.dumps({"b": "c" * 300})
        out = decode(body([row(attrs=plain), row(attrs=attrs)], fmt), fmt)
        assert out[0][ATTRS_I] == plain
        assert orjson.loads(out[1][ATTRS_I]) == {"a" * 256: "x\ufffdy"}

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_oversize_attrs_become_a_marker(self, fmt: str) -> None:
        """Attributes over max_attrs_bytes are replaced by a small object saying so."""
        attrs = orjson.dumps({"blob": "y" * 5000})
        out = decode(body([row(attrs=attrs), row(attrs=b"{}")], fmt), fmt, max_attrs_bytes=1000)
        marker = orjson.loads(out[0][ATTRS_I])
        assert marker == {
            "atrace.truncated": True,
            "atrace.original_bytes": len(attrs),
            "atrace.limit": 1000,
        }
        assert out[1][ATTRS_I] == b"{}"

    def test_deep_json_attrs_are_stored_cut(self) -> None:
        """A JSON body's attrs nested deeper than orjson can write come back cut, not failed."""
        attrs = b'{"d":1,"x":' + b"[" * 300 + b"1" + b"]" * 300 + b"}"
        out = decode(body([row(attrs=attrs)], "json"), "json")
        doc = orjson.loads(out[0][ATTRS_I])
        assert doc["d"] == 1 and b"<too deep>" in out[0][ATTRS_I]

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_deep_attrs_are_cut_at_max_depth(self, fmt: str) -> None:
        """A value nested past max_depth is cut there with "<too deep>", its siblings kept."""
        attrs = b'{"d":1,"x":' + b"[" * 300 + b"1" + b"]" * 300 + b"}"
        _, out, cut = wire.decode_batch_counted(
            body([row(attrs=attrs), row(attrs=b'{"y":[[1]]}')], fmt), CONTENT_TYPES[fmt]
        )
        doc = orjson.loads(out[0][ATTRS_I])
        value, depth = doc["x"], 0
        while isinstance(value, list):
            (value,), depth = value, depth + 1
        assert (doc["d"], value, depth, cut) == (1, "<too deep>", bounds.MAX_DEPTH, 1)
        assert orjson.loads(out[1][ATTRS_I]) == {"y": [[1]]}

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_oversize_value_becomes_a_marker(self, fmt: str) -> None:
        """One attribute value over max_value_bytes becomes a marker; the other attributes stay."""
        attrs = orjson.dumps({"blob": ["z" * 100] * 200, "keep": "me"})
        _, out, cut = wire.decode_batch_counted(
            body([row(attrs=attrs)], fmt), CONTENT_TYPES[fmt], max_value_bytes=1000
        )
        assert cut == 1
        assert orjson.loads(out[0][ATTRS_I]) == {
            "blob": {
                "atrace.truncated": True,
                "atrace.original_bytes": len(orjson.dumps(["z" * 100] * 200)),
                "atrace.limit": 1000,
            },
            "keep": "me",
        }


class TestEnvelope:
    @pytest.mark.parametrize(
        ("doc", "text"),
        [
            ([1, 2], "expected a map"),
            ({"v": 1, "batch": b"x" * 16, "columns": []}, "missing field(s) ['rows']"),
            (
                {"v": 1, "batch": b"x" * 16, "columns": [], "rows": [], "extra": 1},
                "unknown field(s) ['extra']",
            ),
            ({"v": 2, "batch": b"x" * 16, "columns": [], "rows": []}, "version 2"),
            ({"v": True, "batch": b"x" * 16, "columns": [], "rows": []}, "version True"),
            ({"v": 1, "batch": b"x" * 15, "columns": [], "rows": []}, "'batch': expected 16"),
            ({"v": 1, "batch": "ab" * 16, "columns": [], "rows": []}, "'batch': expected 16"),
            (
                {"v": 1, "batch": b"x" * 16, "columns": list(COLUMNS), "rows": {}},
                "'rows': expected an array",
            ),
        ],
    )
    def test_bad_msgpack_envelope(self, doc: Any, text: str) -> None:
        """Each broken part of the envelope is refused by name."""
        with pytest.raises(WireError) as err:
            decode(msgpack.packb(doc, use_bin_type=True))
        assert err.value.status == 400 and text in str(err.value)

    @pytest.mark.parametrize("batch_id", ["xyz", "g" * 32, uuid.UUID(int=1).hex[:-1], 7])
    def test_bad_json_batch_id(self, batch_id: Any) -> None:
        """In JSON the batch id must be 32 hex digits."""
        with pytest.raises(WireError, match="'batch': expected 32 hex digits"):
            decode(body([], "json", batch=batch_id), "json")

    def test_every_truncation_of_a_body_is_refused(self) -> None:
        """Any prefix of a valid msgpack or JSON body is a 400, never a partial batch."""
        for fmt in FORMATS:
            data = encode_batch(Batch(encoder_rows()), fmt)
            for cut in range(len(data)):
                with pytest.raises(WireError) as err:
                    decode(data[:cut], fmt)
                assert err.value.status == 400

    def test_trailing_data_is_refused(self) -> None:
        """A body with bytes after the document is malformed."""
        with pytest.raises(WireError, match="not valid msgpack"):
            decode(body([row()]) + b"\x00")

    def test_corrupted_bodies_fail_cleanly(self) -> None:
        """Random byte flips give a WireError or a batch that passed every check, nothing else."""
        seed = int(os.environ.get("ATRACE_TEST_SEED", random.randrange(1 << 32)))
        print(f"seed={seed}")
        rng = random.Random(seed)
        for fmt in FORMATS:
            data = encode_batch(Batch(encoder_rows()), fmt)
            for _ in range(2000):
                broken = bytearray(data)
                for _ in range(rng.randint(1, 4)):
                    broken[rng.randrange(len(broken))] = rng.randrange(256)
                try:
                    rows = decode(bytes(broken), fmt)
                except WireError as exc:
                    assert exc.status == 400
                    continue
                for r in rows:
                    assert len(r) == len(COLUMNS)
                    assert r[ATTRS_I] is None or type(orjson.loads(r[ATTRS_I])) is dict

    def test_unsupported_content_type(self) -> None:
        """A media type that is neither msgpack nor JSON is a 415."""
        with pytest.raises(WireError) as err:
            decode_batch(body([row()]), "text/plain")
        assert err.value.status == 415 and "text/plain" in str(err.value)

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_too_many_records(self, fmt: str) -> None:
        """More than max_records rows is a 413; exactly max_records is fine."""
        rows = [row()] * 5
        assert len(decode(body(rows, fmt), fmt, max_records=5)) == 5
        with pytest.raises(WireError) as err:
            decode(body(rows, fmt), fmt, max_records=4)
        assert err.value.status == 413 and "limit of 4" in str(err.value)

    def test_garbage_is_refused(self) -> None:
        """Bytes that are no document at all give a 400 naming the format."""
        for fmt in FORMATS:
            with pytest.raises(WireError, match=f"not valid {fmt}"):
                decode(b"\xc1\xff{garbage", fmt)


class TestPublicSurface:
    def test_all_matches_exports(self) -> None:
        """wire's __all__ lists exactly the public names the module defines."""
        tree = ast.parse(Path(wire.__file__).read_text())
        defined: set[str] = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        assert isinstance(wire.__all__, tuple)
        assert all(hasattr(wire, name) for name in wire.__all__)
        assert {n for n in defined if not n.startswith("_")} == set(wire.__all__)


class TestDocuments:
    LINKS = orjson.dumps([{"trace_id": TRACE, "span_id": "00f067aa0ba902b7", "attrs": {"n": 1}}])
    OTLP = orjson.dumps({"severity_number": 10, "types": {"/attrs/b": "bytes"}})

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_links_and_otlp_round_trip(self, fmt: str) -> None:
        """A span's links and a row's otlp document arrive as the JSON bytes that are stored."""
        rows = [row(kind=3, links=self.LINKS), row(otlp=self.OTLP), row()]
        out = decode(body(rows, fmt), fmt)
        assert [orjson.loads(r[LINKS_I]) if r[LINKS_I] else None for r in out] == [
            orjson.loads(self.LINKS),
            None,
            None,
        ]
        assert [orjson.loads(r[OTLP_I]) if r[OTLP_I] else None for r in out] == [
            None,
            orjson.loads(self.OTLP),
            None,
        ]

    @pytest.mark.parametrize(
        ("column", "value", "text"),
        [
            ("links", b'{"trace_id": "x"}', "a JSON array of links"),
            ("links", b'[{"span_id": "00f067aa0ba902b7"}]', "trace_id and span_id"),
            ("links", b"[1]", "trace_id and span_id"),
            ("links", b"[{", "invalid JSON"),
            ("otlp", b"[]", "a JSON object"),
            ("otlp", "text, not bytes", "as bytes"),
        ],
    )
    def test_malformed_documents_refuse_the_batch(self, column: str, value: Any, text: str) -> None:
        """A links column that is not an array of links, or an otlp column that is not an
        object, refuses the batch and names the row and column."""
        with pytest.raises(WireError) as err:
            decode(body([row(), row(**{column: value})]))
        assert err.value.status == 400
        assert "rows[1]" in str(err.value) and column in str(err.value) and text in str(err.value)

    def test_an_oversize_document_is_stored_as_null_and_counted(self) -> None:
        """A links document past max_attrs_bytes is dropped (null) and counted as cut; the
        rest of the row and batch is kept."""
        big = orjson.dumps([{"trace_id": TRACE, "span_id": "0" * 16, "attrs": {"x": "y" * 5000}}])
        rows = [row(kind=3, links=big, message="kept"), row(kind=3, links=self.LINKS)]
        _, out, cut = wire.decode_batch_counted(
            body(rows), CONTENT_TYPES["msgpack"], max_attrs_bytes=4096
        )
        assert cut == 1
        assert out[0][LINKS_I] is None and out[0][MESSAGE_I] == "kept"
        assert out[1][LINKS_I] == self.LINKS

    def test_nul_escapes_in_a_document_are_replaced(self) -> None:
        """\\u0000 (which jsonb refuses) in an otlp document becomes U+FFFD."""
        out = decode(body([row(otlp=b'{"severity_text": "a\\u0000b"}')]))
        assert orjson.loads(out[0][OTLP_I]) == {"severity_text": "a\ufffdb"}


class TestResourcesEnvelope:
    DOC = orjson.dumps({"resource": {"attrs": {"service.name": "svc", "team": "pay"}}})

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_documents_travel_with_the_batch(self, fmt: str) -> None:
        """encode_batch sends the documents the rows name; the decoder hands them over."""
        batch = Batch([row(resource_id=-5)])
        found: dict[int, bytes] = {}
        _, rows, _ = wire.decode_batch_counted(
            encode_batch(batch, fmt, {-5: self.DOC}), CONTENT_TYPES[fmt], resources=found
        )
        assert rows[0][-1] == -5
        assert {k: orjson.loads(v) for k, v in found.items()} == {-5: orjson.loads(self.DOC)}

    @pytest.mark.parametrize(
        ("resources", "text"),
        [
            ({"a": 1}, "an array"),
            ([[1]], "[id, document] pair"),
            ([["x", b"{}"]], "signed 64-bit"),
            ([[1, b"[]"]], "JSON object"),
            ([[1, b"{"]], "invalid JSON"),
            ([[1, b'{"k": "' + b"x" * 70_000 + b'"}']], "at most"),
            ([[i, b"{}"] for i in range(65)], "at most 64"),
        ],
    )
    def test_malformed_documents_refuse_the_batch(self, resources: Any, text: str) -> None:
        """A resources field that is not [id, JSON object] pairs within bounds is a 400."""
        with pytest.raises(WireError) as err:
            decode(body([row()], resources=resources))
        assert err.value.status == 400 and "'resources'" in str(err.value)
        assert text in str(err.value)

    def test_other_unknown_envelope_fields_are_still_refused(self) -> None:
        """Only the documented optional field is accepted beside the four required ones."""
        with pytest.raises(WireError, match=r"unknown field\(s\) \['extra'\]"):
            decode(body([row()], extra=1))
