"""The compiled OTLP protobuf decoder against its upb twin: the same rows, the same refusals."""

from __future__ import annotations

import base64
import importlib
import itertools
import os
import random
import struct
import types
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from atrace._formats import otlp
from atrace._formats.otlp import _pb_py, json_decode
from atrace._formats.otlp import rows as _otlp_rows
from atrace._records import COLUMNS
from atrace._speedups import FORCE_TWINS
from atrace.errors import WireError

T0 = 1_700_000_000_123_456_789
TRACE = bytes.fromhex("0190b2c3d4e5f60718293a4b5c6d7e8f")
SPAN = (5).to_bytes(8, "big")

Decode = Callable[[bytes, int], list[tuple[Any, ...]]]


@pytest.fixture
def fast() -> types.ModuleType:
    """The compiled decoder; a build that will not import fails (unless the twin is forced)."""
    if FORCE_TWINS:
        pytest.skip("ATRACE_PUREPYTHON is set: this run covers the pure-Python twin only")
    try:
        return importlib.import_module("atrace._formats.otlp._pb")
    except ImportError as exc:
        pytest.fail(
            f"the compiled OTLP decoder does not import ({exc}); build it with "
            "`python setup.py build_ext --inplace` or run with ATRACE_PUREPYTHON=1"
        )


@pytest.fixture(autouse=True)
def _fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log record without times takes "now": both decoders are given the same one."""
    monkeypatch.setattr(_otlp_rows, "time", types.SimpleNamespace(time_ns=lambda: T0))


def outcome(decode: Decode, body: Any, max_records: int) -> Any:
    """The rows, or the refusal's status and message."""
    try:
        return decode(body, max_records)
    except WireError as exc:
        return (exc.status, str(exc))


def agree(fast: types.ModuleType, body: Any, logs: bool = False, max_records: int = 100_000) -> Any:
    """Decode with both; they must give equal rows or equal refusals. Returns the outcome."""
    if logs:
        pair = (fast.decode_logs_pb, _pb_py.decode_logs_pb)
    else:
        pair = (fast.decode_traces_pb, _pb_py.decode_traces_pb)
    compiled, twin = (outcome(decode, body, max_records) for decode in pair)
    assert compiled == twin, f"body {bytes(body).hex()}"
    return twin


def rows(fast: types.ModuleType, body: Any, logs: bool = False, max_records: int = 100_000) -> Any:
    """Decode with both; they must give equal rows (not a refusal). Returns the rows."""
    out = agree(fast, body, logs=logs, max_records=max_records)
    assert isinstance(out, list), out
    return out


def hex_ids(document: Any) -> Any:
    """The standard protobuf JSON mapping's base64 ids turned into OTLP/JSON's hex."""
    if isinstance(document, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in ("traceId", "spanId", "parentSpanId")
            else hex_ids(value)
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [hex_ids(v) for v in document]
    return document


def everywhere(fast: types.ModuleType, request: Any) -> Any:
    """Decode an official request object compiled, by the twin and as OTLP/JSON; all three must
    give equal rows. Returns the rows."""
    logs = isinstance(request, ExportLogsServiceRequest)
    out = rows(fast, request.SerializeToString(), logs=logs)
    document = orjson.dumps(hex_ids(json_format.MessageToDict(request)))
    decode = json_decode.decode_logs_json if logs else json_decode.decode_traces_json
    assert decode(document, 100_000) == out
    return out


# ---- bodies -----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number, 2) + varint(len(payload)) + payload


def fixed64(number: int, value: int) -> bytes:
    return tag(number, 1) + value.to_bytes(8, "little")


def fixed32(number: int, value: int) -> bytes:
    return tag(number, 5) + value.to_bytes(4, "little")


def group(number: int, content: bytes = b"") -> bytes:
    return tag(number, 3) + content + tag(number, 4)


def kv(key: bytes, value: bytes | None) -> bytes:
    """A KeyValue; ``value`` is an AnyValue's bytes (None: no value at all)."""
    return ld(1, key) + (b"" if value is None else ld(2, value))


def span(*fields: bytes, ids: bool = True) -> bytes:
    head = ld(1, TRACE) + ld(2, SPAN) + fixed64(7, T0) + fixed64(8, T0 + 10) if ids else b""
    return head + b"".join(fields)


def traces(*spans: bytes, resource: bytes = b"") -> bytes:
    """One ResourceSpans with one ScopeSpans holding ``spans``."""
    rs = (ld(1, resource) if resource else b"") + ld(2, b"".join(ld(2, s) for s in spans))
    return ld(1, rs)


def logs(*records: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    sl = (ld(1, scope) if scope else b"") + b"".join(ld(2, r) for r in records)
    return ld(1, (ld(1, resource) if resource else b"") + ld(2, sl))


def s(text: str) -> bytes:
    """An AnyValue string."""
    return ld(1, text.encode())


def nested_array(levels: int, inner: bytes) -> bytes:
    for _ in range(levels):
        inner = ld(5, ld(1, inner))
    return inner


def random_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    """Rows as atrace makes them: spans (some failed, some announced) and logs."""
    alphabet = "abc xyz/:'\"\\é✓\U0001f600\x00"
    rows = []
    for _ in range(n):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        kind = rng.choice((0, 2, 3, 3))
        status = rng.choice((0, 1, 2)) if kind else 0
        attrs = {
            "s": text,
            "i": rng.randint(-(2**63), 2**63 - 1),
            "f": rng.choice((rng.uniform(-1e6, 1e6), 1e16, 0.5, -0.0)),
            "b": rng.random() < 0.5,
            "l": [rng.randint(0, 9) for _ in range(rng.randint(0, 4))],
            "m": {"k": text, "n": [None, 1.5]},
            rng.choice(("span.kind", "http.route")): rng.choice(("server", "client", "x")),
        }
        values: dict[str, Any] = {
            "ts": rng.randint(1, 2**62),
            "kind": kind,
            "level": 40 if status == 2 else rng.choice((10, 20, 30, 40)),
            "trace_id": f"{rng.getrandbits(128) | 1:032x}" if kind or rng.random() < 0.5 else None,
            "span_id": rng.randint(-(2**63), 2**63 - 1) or 1,
            "parent_id": rng.choice((None, rng.randint(1, 2**63 - 1))),
            "duration_ns": rng.randint(0, 10**12) if kind else None,
            "status": status,
            "service": rng.choice(("checkout", "billing", "é")),
            "environment": rng.choice((None, "prod")),
            "host": rng.choice((None, "web-1")),
            "pid": rng.choice((None, 4242)),
            "name": text or None,
            "message": None if kind else text,
            "attrs": attrs if rng.random() < 0.8 else None,
            "error_type": "ValueError" if status == 2 or rng.random() < 0.1 else None,
            "error_message": text if status == 2 else None,
            "stack_trace": "Traceback ...\n" if status == 2 else None,
            "location": rng.choice((None, f"{text}.py:{rng.randint(1, 999)}")),
            "span_kind": rng.choice((None, 0, 1, 2, 3, 4, 5)) if kind else None,
            "trace_state": rng.choice((None, "", text)),
            "trace_flags": rng.choice((None, 0, 1, 3, 255)),
            "status_message": rng.choice((None, "", text)) if kind else None,
            "links": None,
            "otlp": None,
            "resource_id": None,
        }
        values["attrs"] = None if values["attrs"] is None else orjson.dumps(values["attrs"])
        rows.append(tuple(values[c] for c in COLUMNS))
    return rows


def sdk_bodies() -> tuple[bytes, bytes]:
    """What the OpenTelemetry SDK's OTLP exporters send, for spans and for logs."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    resource = Resource.create(
        {"service.name": "sdk-svc", "host.name": "sdk-host", "process.pid": 4321, "v": 1.5}
    )
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    records = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(records))
    tracer = tracer_provider.get_tracer("sdk.test")
    logger = logger_provider.get_logger("sdk.logger")
    attributes: dict[str, Any] = {
        "http.route": "/orders",
        "n": 3,
        "ok": True,
        "ms": 1.25,
        "tags": ["a", "b"],
    }
    with tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER, attributes=attributes):
        for i in range(5):
            with tracer.start_as_current_span("db.query", kind=SpanKind.CLIENT) as child:
                child.set_attribute("db.statement", "SELECT 1 -- é")
                child.set_attribute("rows", [1, 2, i])
                child.set_status(Status(StatusCode.OK))
                logger.emit(body="query ran", severity_number=SeverityNumber.WARN)
        try:
            with tracer.start_as_current_span("charge", attributes={"code.filepath": "a.py"}):
                raise ValueError("card declined")
        except ValueError:
            pass
    logger.emit(body={"event": "shutdown", "codes": [1, 2]}, severity_number=SeverityNumber.ERROR)
    trace_body = encode_spans(spans.get_finished_spans()).SerializeToString()
    log_body = encode_logs(records.get_finished_logs()).SerializeToString()
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return trace_body, log_body


TEXTS = [
    "",
    "a",
    "http.method",
    "é✓",
    "\U0001f600",
    "nul\x00in",
    'quote"back\\slash\n',
    "x" * 300,
    "k" * 5000,
    "code.filepath",
    "code.lineno",
    "code.file.path",
    "service.name",
    "deployment.environment",
    "host.name",
    "process.pid",
    "exception.message",
    "exception.type",
    "exception",
    "span.kind",
    "logger.name",
    "event.name",
]
BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82"]


class SchemaFuzzer:
    """Random messages from the protos' descriptors: known fields (sometimes with the wrong wire
    type), unknown fields of every wire type, repeated singular fields, odd values."""

    def __init__(self, rng: random.Random, bad_text: float) -> None:
        self.rng = rng
        self.bad_text = bad_text
        self.trace_ids = [rng.randbytes(16) for _ in range(3)] + [bytes(16)]

    def text(self) -> bytes:
        r = self.rng
        if r.random() < self.bad_text:
            return r.choice(BAD_UTF8)
        if r.random() < 0.7:
            return r.choice(TEXTS).encode()
        return "".join(r.choice("ab.:/ \x00é✓\U0001f600") for _ in range(r.randint(0, 20))).encode()

    def number(self) -> int:
        r = self.rng
        return r.choice(
            (r.randint(0, 6), r.randint(0, 1 << 20), r.randint(-(1 << 63), (1 << 63) - 1), -1)
        )

    def raw(self, number: int, wire_type: int, depth: int) -> bytes:
        r = self.rng
        if wire_type == 0:
            return tag(number, 0) + varint(self.number())
        if wire_type == 1:
            return tag(number, 1) + r.randbytes(8)
        if wire_type == 5:
            return tag(number, 5) + r.randbytes(4)
        if wire_type == 2:
            return ld(number, r.randbytes(r.randint(0, 12)))
        inner = b"".join(
            self.unknown(depth + 1) for _ in range(r.randint(0, 2) if depth < 8 else 0)
        )
        return group(number, inner)

    def unknown(self, depth: int) -> bytes:
        r = self.rng
        number = r.choice((r.randint(17, 40), r.randint(1, (1 << 29) - 1)))
        return self.raw(number, r.choice((0, 1, 2, 3, 5)), depth)

    def field(self, f: FieldDescriptor, depth: int) -> bytes:
        r = self.rng
        if r.random() < 0.03:
            return self.raw(f.number, r.choice((0, 1, 2, 3, 5)), depth)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return ld(f.number, self.message(f.message_type, depth + 1))
        if f.type == FieldDescriptor.TYPE_STRING:
            return ld(f.number, self.text())
        if f.type == FieldDescriptor.TYPE_BYTES:
            if f.name == "trace_id":
                size = r.choice((0, 7, 15, 17))
                value = r.choice(self.trace_ids) if r.random() < 0.9 else r.randbytes(size)
            elif f.name.endswith("span_id"):
                value = r.randbytes(8) if r.random() < 0.9 else r.choice((bytes(8), b"", b"\x01"))
            else:
                value = r.randbytes(r.randint(0, 10))
            return ld(f.number, value)
        if f.type in (FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_DOUBLE):
            return tag(f.number, 1) + r.choice(
                (r.randint(1, 1 << 62).to_bytes(8, "little"), r.randbytes(8))
            )
        if f.type == FieldDescriptor.TYPE_FIXED32:
            return tag(f.number, 5) + r.randbytes(4)
        return tag(f.number, 0) + varint(self.number())

    def message(self, desc: Descriptor, depth: int = 0) -> bytes:
        r = self.rng
        fields = list(desc.fields)
        if depth >= 12:
            fields = [f for f in fields if f.type != FieldDescriptor.TYPE_MESSAGE]
        out = []
        if desc.name == "Span" and r.random() < 0.9:
            out = [self.field(desc.fields_by_name[n], depth) for n in ("trace_id", "span_id")]
            out.append(fixed64(7, r.randint(1, 1 << 62)))
        sizes = {"Span": 12, "LogRecord": 10, "ScopeSpans": 5, "ScopeLogs": 5, "AnyValue": 2}
        for _ in range(r.randint(0, sizes.get(desc.name, 3))):
            if fields and r.random() < 0.9:
                out.append(self.field(r.choice(fields), depth))
            else:
                out.append(self.unknown(depth))
        if r.random() < 0.2:
            r.shuffle(out)
        return b"".join(out)


def mutate(rng: random.Random, body: bytes) -> bytes:
    """A truncation, byte flips, insertions or deletions."""
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        if not b:
            b.append(rng.randrange(256))
            continue
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.3:
            del b[i:]
        elif op < 0.6:
            b[i] = rng.randrange(256)
        elif op < 0.75:
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.85:
            del b[i]
        else:
            b.insert(i, rng.randrange(256))
    return bytes(b)


def seeded() -> random.Random:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed={seed}")
    return random.Random(seed)


# ---- same rows --------------------------------------------------------------------------------


class TestSameRows:
    def test_seeded_random_rows(self, fast: types.ModuleType) -> None:
        """Requests made from random rows by atrace's own encoder decode to the same rows."""
        rng = seeded()
        for _ in range(20):
            batch = random_rows(rng, rng.randint(1, 30))
            rows(fast, otlp.traces_request(batch).SerializeToString())
            rows(fast, otlp.logs_request(batch).SerializeToString(), logs=True)

    def test_what_the_sdk_sends(self, fast: types.ModuleType) -> None:
        """The OpenTelemetry SDK's exporter bodies (resource, kinds, events, errors) agree."""
        trace_body, log_body = sdk_bodies()
        spans = everywhere(fast, ExportTraceServiceRequest.FromString(trace_body))
        assert len(spans) == 7 and {r[12] for r in spans} == {"GET /orders", "db.query", "charge"}
        assert {r[COLUMNS.index("span_kind")] for r in spans} == {1, 2, 3}
        assert len(everywhere(fast, ExportLogsServiceRequest.FromString(log_body))) == 6

    def test_span_context_columns(self, fast: types.ModuleType) -> None:
        """Span kinds (unknown ones too), trace states, flags and status messages of every code
        come out alike from all three decoders, on the common-span path and the general one."""
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.version", "1"
        spans = rs.scope_spans.add().spans
        states = ("", "rojo=00f067aa0ba902b7", "k\x00=v", "é" * 600)
        flags = (0, 1, 0x100, 0x301, 0xFFFF_FFFF)
        statuses = ((0, ""), (1, "ok"), (0, "unset, still said"), (2, "boom"), (2, ""))
        for i, (kind, state, flag) in enumerate(
            itertools.product((0, 1, 2, 3, 4, 5, 7, -3, 2**31 - 1), states, flags)
        ):
            sp = spans.add()
            sp.trace_id, sp.span_id = TRACE, (i + 1).to_bytes(8, "big")
            sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 + i
            sp.kind, sp.trace_state, sp.flags = kind, state, flag
            sp.status.code, sp.status.message = statuses[i % len(statuses)]
            attr = sp.attributes.add()
            attr.key, attr.value.string_value = ("span.kind", "n")[i % 2], "server"
            if i % 3 == 1:
                sp.events.add().name = "tick"
            elif i % 3 == 2:
                event = sp.events.add()
                event.name = "exception"
                attr = event.attributes.add()
                attr.key, attr.value.string_value = "exception.message", f"exception {i}"
        out = everywhere(fast, request)
        span_rows = [r for r in out if r[1] == 3]
        assert {r[COLUMNS.index("span_kind")] for r in span_rows} == {0, 1, 2, 3, 4, 5}
        assert {r[COLUMNS.index("trace_flags")] for r in span_rows} == {None, 0, 1, 255}
        assert len(span_rows) == len(spans) and len(out) > len(spans)

    def test_log_flags(self, fast: types.ModuleType) -> None:
        """A log record's flags give the same trace_flags in all three decoders."""
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        for flags in (0, 1, 0x103, 0xFFFF_FFFF):
            record = records.add()
            record.time_unix_nano, record.flags = T0, flags
        out = everywhere(fast, request)
        assert [r[COLUMNS.index("trace_flags")] for r in out] == [None, 1, 3, 255]

    def test_every_value_type(self, fast: types.ModuleType) -> None:
        """Strings, booleans, ints, doubles, bytes, arrays, kvlists, string indexes, unset."""
        values = [
            s("text"),
            s(""),
            tag(2, 0) + varint(1),
            tag(2, 0) + varint(7),
            tag(2, 0) + varint(0),
            tag(3, 0) + varint(-(2**63)),
            tag(3, 0) + varint(2**63 - 1),
            tag(3, 0) + varint(-1),
            *(tag(4, 1) + struct.pack("<d", x) for x in (1.5, 1e16, -0.0, 1e-7, 2.0**70)),
            tag(4, 1) + bytes.fromhex("000000000000f87f"),  # NaN
            tag(4, 1) + bytes.fromhex("000000000000f07f"),  # inf
            ld(7, b"\x00\xffbytes"),
            ld(7, b""),
            tag(8, 0) + varint(3),
            tag(8, 0) + varint(-5),
            ld(5, b""),
            ld(5, ld(1, s("a")) + ld(1, b"") + ld(1, tag(8, 0) + varint(1)) + ld(1, ld(7, b"z"))),
            ld(6, b""),
            ld(6, ld(1, kv(b"a", s("b"))) + ld(1, kv(b"no", None)) + ld(1, kv(b"k\x00", s("v")))),
            ld(6, ld(1, kv(b"exception.message", s("m" * 5000)))),
            b"",
        ]
        body = traces(span(*(ld(9, kv(f"k{i}".encode(), v)) for i, v in enumerate(values))))
        rows(fast, body)
        for i, value in enumerate(values):
            rows(fast, traces(span(ld(9, kv(b"only", value)))))
            rows(fast, logs(ld(5, value), fixed64(1, T0 + i)), logs=True)

    @pytest.mark.parametrize("levels", [0, 1, 30, 31, 32, 33, 40, 47, 48])
    def test_nested_values_to_the_limits(self, fast: types.ModuleType, levels: int) -> None:
        """Arrays and kvlists nest to the twin's marker depth and to upb's nesting limit."""
        for inner in (s("x"), ld(7, b"b"), tag(8, 0) + varint(1), ld(5, b""), s("x" * 5000)):
            out = agree(fast, traces(span(ld(9, kv(b"k", nested_array(levels, inner))))))
            assert isinstance(out, list) == (levels < 48)
            kvlist = inner
            for _ in range(levels // 2):
                kvlist = ld(6, ld(1, kv(b"k", kvlist)))
            agree(fast, traces(span(ld(9, kv(b"k", kvlist)))))
            agree(fast, logs(ld(5, nested_array(levels, inner)), fixed64(1, T0)), logs=True)
        # 47 levels put the innermost AnyValue at upb's 99th nesting level; then 100, then 101.
        agree(fast, traces(span(ld(9, kv(b"k", nested_array(47, ld(5, b"")))))))
        agree(fast, traces(span(ld(9, kv(b"k", nested_array(47, ld(5, ld(1, b""))))))))

    def test_texts(self, fast: types.ModuleType) -> None:
        """Non-ASCII, NUL, JSON escapes, 10k-character keys, long names and values are the same."""
        texts = [*TEXTS, "k" * 10_000, "é" * 5000, "\x01\x1f\x7f", "exception.stacktrace"]
        texts += ["x" * n for n in (255, 256, 257, 1024, 1025, 4096, 4097, 32_768, 32_769)]
        texts += ["é" * 256, "a" * 255 + "é", "\U0001f600" * 1025]
        for text in texts:
            raw = text.encode()
            rows(fast, traces(span(ld(5, raw), ld(9, kv(raw, s(text))))))
            rows(fast, traces(span(ld(9, kv(b"exception.message", ld(1, raw * 3))))))
            rows(fast, traces(span(ld(5, raw)), resource=ld(1, kv(raw, s(text)))))
            rows(fast, logs(ld(5, ld(1, raw)), ld(3, raw), ld(12, raw)), logs=True)
            rows(fast, logs(fixed64(11, T0), scope=ld(1, raw)), logs=True)

    def test_ids(self, fast: types.ModuleType) -> None:
        """Missing, zero and wrong-size ids, and a missing start, are refused alike."""
        for trace_id in (TRACE, b"", bytes(16), TRACE[:7], TRACE + b"\x01"):
            for span_id in (SPAN, b"", bytes(8), b"\x01" * 9):
                for parent in (None, b"", bytes(8), SPAN, b"\x01" * 3):
                    fields = ld(1, trace_id) + ld(2, span_id)
                    fields += b"" if parent is None else ld(4, parent)
                    agree(fast, traces(fields + fixed64(7, T0)))
                record = ld(9, trace_id) + ld(10, span_id) + fixed64(1, T0)
                agree(fast, logs(record), logs=True)
        agree(fast, traces(ld(1, TRACE) + ld(2, SPAN)))  # no start
        # the trace id of consecutive spans is shared; a later bad one is still refused
        agree(fast, traces(span(), span(), span(ld(1, b"\x01" * 15))))

    def test_resources_scopes_and_order(self, fast: types.ModuleType) -> None:
        """Several resources and scopes, empty ones, and a resource after its spans."""
        res_a = ld(1, kv(b"service.name", s("a"))) + ld(1, kv(b"host.name", s("h")))
        res_b = ld(1, kv(b"process.pid", s("77"))) + ld(1, kv(b"extra", s("x")))
        scope = ld(2, span()) + ld(1, ld(1, b"scope")) + ld(2, span(ld(5, b"second")))
        rs_late = ld(2, scope) + ld(1, res_a) + ld(1, res_b) + ld(2, b"")
        body = ld(1, ld(1, res_a) + ld(2, scope)) + ld(1, b"") + ld(1, rs_late) + ld(1, ld(2, b""))
        assert len(rows(fast, body)) == 4
        rows(fast, ld(1, ld(1, res_b) + ld(2, scope) + ld(1, res_a)))
        log_scope = ld(1, ld(1, b"late.scope")) + ld(2, fixed64(1, T0))
        rows(fast, ld(1, ld(2, ld(2, fixed64(1, T0)) + ld(1, ld(1, b"sc")))), logs=True)
        rows(fast, ld(1, ld(2, log_scope) + ld(1, res_a)), logs=True)

    def test_events_and_failures(self, fast: types.ModuleType) -> None:
        """Events become linked rows; an ERROR status takes an exception event's error fields."""
        exception = ld(2, b"exception") + ld(3, kv(b"exception.type", s("E")))
        exception += ld(3, kv(b"exception.message", s("bad")))
        event = fixed64(1, T0 + 5) + ld(2, b"cache.miss") + ld(3, kv(b"k", s("v")))
        error = ld(15, ld(2, b"status says") + tag(3, 0) + varint(2))
        for fields in (
            [ld(11, event)],
            [ld(11, exception), error],
            [error],
            [ld(11, event), ld(11, exception), ld(11, b""), error, tag(6, 0) + varint(-3)],
            [ld(15, tag(3, 0) + varint(1)), ld(11, event)],
        ):
            body = traces(span(*fields), resource=ld(1, kv(b"r", s("x"))))
            rows(fast, body)
            agree(fast, body, max_records=1)
        many = traces(*(span(ld(11, event)) for _ in range(3)))
        assert agree(fast, many, max_records=5)[0] == 413
        assert len(rows(fast, many, max_records=6)) == 6

    def test_merged_fields(self, fast: types.ModuleType) -> None:
        """A singular field sent twice takes the last value; a message sent twice merges."""
        arrays = ld(5, ld(1, s("a"))) + ld(5, ld(1, s("b")))
        cases = [
            span(ld(5, b"first"), ld(5, b"second"), tag(6, 0) + varint(2), tag(6, 0) + varint(3)),
            span(ld(15, tag(3, 0) + varint(2)), ld(15, ld(2, b"msg"))),
            span(ld(1, TRACE[::-1]), ld(2, SPAN[::-1])),
            span(ld(9, kv(b"k", s("a")) + ld(2, tag(3, 0) + varint(4)))),
            span(ld(9, kv(b"k", arrays))),
            span(ld(9, kv(b"k", ld(5, ld(1, s("a")))) + ld(2, ld(5, ld(1, s("b")))))),
            span(ld(9, kv(b"k", ld(5, ld(1, s("a"))) + s("x") + ld(5, ld(1, s("c")))))),
            span(ld(9, kv(b"k", ld(6, ld(1, kv(b"a", s("1")))) + ld(6, ld(1, kv(b"b", s("2"))))))),
            span(ld(9, kv(b"k", ld(5, ld(1, arrays))))),
            span(ld(9, kv(b"k", s("a")) + ld(1, b"k2"))),
            span(ld(9, kv(b"k", s("a"))), ld(9, kv(b"k", s("b"))), ld(9, kv(b"j", s("c")))),
            span(ld(9, kv(b"service.version", s("span's"))), ld(9, kv(b"span.kind", s("x")))),
            span(ld(9, kv(b"span.kind", s("x"))), tag(6, 0) + varint(2)),
            span(ld(9, kv(b"code.filepath", s("a.py"))), ld(9, kv(b"code.lineno", s("3")))),
            span(ld(9, kv(b"code.file.path", s("b.py")))),
            span(ld(3, b"a=1"), ld(3, b"b=2")),
            span(ld(3, b"a=1"), tag(3, 0) + varint(1), ld(15, ld(2, b"x")), ld(15, ld(2, b""))),
            span(fixed32(16, 0x301), fixed32(16, 0x2)),
            span(fixed32(16, 0x301), tag(16, 0) + varint(1), fixed64(16, 7)),
            span(tag(6, 0) + varint(2**40 + 2)),
            span(tag(6, 0) + varint(7), ld(11, ld(2, b"ev")), fixed32(16, 5), ld(3, b"s")),
        ]
        resource = ld(1, kv(b"service.version", s("1"))) + ld(1, kv(b"code.lineno", s("9")))
        for fields in cases:
            rows(fast, traces(fields))
            rows(fast, traces(fields, resource=resource))
        rows(fast, traces(span(), resource=ld(1, kv(b"code.filepath", s("r.py")))))
        bodies = ld(5, arrays) + ld(5, s("x")) + ld(5, ld(6, ld(1, kv(b"a", s("b")))))
        rows(fast, logs(fixed64(1, T0) + bodies), logs=True)
        rows(fast, logs(fixed64(1, T0) + ld(5, s("a")) + ld(5, tag(3, 0) + varint(1))), logs=True)
        rows(fast, logs(fixed64(1, T0) + fixed32(8, 0x103) + fixed32(8, 2)), logs=True)
        rows(fast, logs(fixed64(1, T0) + fixed32(8, 1) + tag(8, 0) + varint(3)), logs=True)

    def test_many_attributes(self, fast: types.ModuleType) -> None:
        """Spans with more attributes than usual, under a resource with hundreds of them."""
        resource = b"".join(ld(1, kv(f"r{i}".encode(), s(str(i)))) for i in range(300))
        for n in (127, 128, 129, 300):
            attrs = [ld(9, kv(f"k{i}".encode(), tag(3, 0) + varint(i))) for i in range(n)]
            rows(fast, traces(span(*attrs)))
            rows(fast, traces(span(*attrs), resource=resource))
            rows(fast, traces(span(*attrs, ld(9, kv(b"r299", s("mine")))), resource=resource))
            rows(fast, traces(span(*attrs, ld(9, kv(b"k0", s("again")))), resource=resource))

    def test_unknown_fields_of_every_wire_type(self, fast: types.ModuleType) -> None:
        """Unknown fields and known fields with another wire type are skipped at every level."""
        junk = (
            tag(99, 0)
            + varint(2**64 - 1)
            + fixed64(98, 1)
            + ld(97, b"\xff\xfe")
            + tag(96, 5)
            + b"1234"
            + group(95, group(94, tag(0, 0) + varint(1)) + ld(93, b"x"))
            + group(100_000, b"")
            + tag(2**29 - 1, 0)
            + b"\x00"
        )
        wrong = tag(1, 0) + varint(7) + tag(2, 5) + b"abcd" + tag(3, 1) + bytes(8) + group(4)
        attr = ld(9, junk + kv(b"k", junk + s("v") + junk) + junk + wrong)
        event = ld(11, junk + fixed64(1, T0) + ld(2, b"ev") + wrong)
        body = ld(
            1,
            junk
            + ld(1, junk + ld(1, kv(b"r", s("x"))) + wrong)
            + ld(2, junk + ld(1, junk + wrong) + ld(2, span(junk, attr, wrong, event) + junk))
            + wrong,
        )
        assert len(rows(fast, junk + body + junk + wrong)) == 2
        record = junk + fixed64(1, T0) + ld(5, junk + s("m")) + ld(6, kv(b"a", s("b"))) + wrong
        assert (
            len(rows(fast, ld(1, junk + ld(2, junk + ld(2, record) + wrong)) + junk, logs=True))
            == 1
        )

    def test_empty_and_odd_bodies(self, fast: types.ModuleType) -> None:
        """Empty requests and messages, and non-bytes bodies, decode alike."""
        for body in (b"", ld(1, b""), ld(1, ld(2, b"")), traces(b""), logs(b""), logs(b"")[:2]):
            agree(fast, body)
            agree(fast, body, logs=True)
        body = traces(span(ld(9, kv(b"k", s("v")))))
        for odd in (bytearray(body), memoryview(body)):
            assert rows(fast, odd) == rows(fast, body)
        for not_bytes in ("text", None, 12):
            assert agree(fast, not_bytes)[0] == 400

    def test_max_records(self, fast: types.ModuleType) -> None:
        """Too many spans, events or log records is a 413 like the twin's."""
        body = traces(*(span() for _ in range(11)))
        for limit in (0, 10, 11, -1):
            agree(fast, body, max_records=limit)
        record = ld(2, fixed64(1, T0))
        for limit in (0, 2, 3, 2**70):
            agree(fast, ld(1, ld(2, record * 3)), logs=True, max_records=limit)


# ---- same refusals ----------------------------------------------------------------------------


class TestSameRefusals:
    @pytest.mark.parametrize(
        "body",
        [
            b"\xff\xff\xff\xff",
            b"\x0a\x05abc",
            b"\x0a",
            b"\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
            b"\x08" + b"\xff" * 9 + b"\x01",  # 10 bytes: fine
            b"\x88\x80\x80\x80\x80\x00\x01",  # a 6-byte tag
            b"\x88\x80\x80\x80\x70\x01",  # a tag beyond 32 bits
            b"\x00\x01",  # field number 0
            tag(0, 3) + tag(0, 4),
            b"\x0e",  # wire type 6
            b"\x0f",  # wire type 7
            tag(5, 4),  # an end-group tag that closes nothing
            tag(5, 3) + tag(6, 4),
            tag(5, 3),
            tag(5, 3) + tag(6, 0) + b"\x01",
            ld(1, tag(5, 3)) + tag(5, 4),
            tag(9, 1) + b"\x01\x02",
            tag(9, 5) + b"\x01",
            ld(1, ld(2, ld(2, span(tag(7, 1) + b"\x01")))),
            ld(1, b"\x12\x05ab"),
        ],
    )
    def test_corrupt_bodies(self, fast: types.ModuleType, body: bytes) -> None:
        """Malformed wire data is a 400 with upb's reason, in traces and in logs."""
        agree(fast, body)
        agree(fast, body, logs=True)

    def test_bad_utf8_in_every_string_field(self, fast: types.ModuleType) -> None:
        """Invalid UTF-8 in any string field (used or not) is refused, as upb refuses it."""
        for bad in BAD_UTF8:
            bodies = [
                traces(span(ld(5, bad))),
                traces(span(ld(3, bad))),
                traces(span(ld(9, kv(bad, s("v"))))),
                traces(span(ld(9, kv(b"k", ld(1, bad))))),
                traces(span(ld(9, kv(b"k", ld(5, ld(1, ld(1, bad))))))),
                traces(span(ld(11, ld(2, bad)))),
                traces(span(ld(13, ld(3, bad)))),
                traces(span(ld(13, ld(4, kv(bad, None))))),
                traces(span(ld(15, ld(2, bad)))),
                traces(span(ld(7, bad))),  # a bytes field of wrong wire type: unknown, fine
                traces(span(ld(1, bad))),  # bytes: not checked
                ld(1, ld(3, bad)),
                ld(1, ld(2, ld(3, bad))),
                ld(1, ld(2, ld(1, ld(1, bad)))),
                ld(1, ld(2, ld(1, ld(2, bad)))),
                ld(1, ld(1, ld(3, ld(3, b"ok") + ld(4, bad)))),
                ld(1, ld(1, ld(3, ld(1, bad)))),
                ld(1, ld(1, ld(3, ld(2, bad)))),
            ]
            for body in bodies:
                agree(fast, body)
            for record in (ld(3, bad), ld(12, bad), ld(5, ld(1, bad)), ld(6, kv(bad, None))):
                agree(fast, logs(record), logs=True)

    def test_utf8_validity(self, fast: types.ModuleType) -> None:
        """Each lead byte with boundary continuations, cut short or not: upb's verdict exactly."""
        conts = (0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF)
        for lead in range(0x80, 0x100):
            for c1 in conts:
                for c2 in (0x80, 0xBF, 0x41):
                    for tail in (b"", b"\x80", b"\xbf", b"A"):
                        seq = bytes((lead, c1, c2)) + tail
                        for text in (seq, seq[:2], b"padding" + seq + b"padding"):
                            agree(fast, traces(span(ld(5, text))))

    def test_strings_overrunning_their_message(self, fast: types.ModuleType) -> None:
        """upb checks a string's UTF-8 before it sees that the string overran its message."""
        for tail in (b"\xff", b"ok", b"\xff" * 40, b""):
            for extra in range(len(tail) + 2):
                head = tag(3, 2) + varint(3 + extra) + b"abc"
                agree(fast, ld(1, head) + tail)
                agree(fast, ld(1, ld(2, head)) + tail)
                agree(fast, ld(1, ld(2, head[:-1])) + tail)
            agree(fast, ld(1, ld(2, tag(2, 2))) + tail)

    def test_nesting_limits(self, fast: types.ModuleType) -> None:
        """Groups and messages nested past upb's limit are refused with upb's reason."""
        for levels in (96, 97, 98, 99, 100, 101):
            nest = b""
            for i in range(levels):
                nest = group(5 + i % 3, nest)
            agree(fast, nest)
            agree(fast, traces(span(nest)))
        for levels in (46, 47, 48, 49):
            agree(fast, traces(span(ld(9, kv(b"k", nested_array(levels, group(7)))))))
            agree(fast, traces(span(ld(9, kv(b"k", nested_array(levels, ld(5, b"")))))))
            # too deep and overrunning its parent: the overrun is what upb reports
            overrun = ld(5, tag(1, 2) + varint(10))
            agree(fast, traces(span(ld(9, kv(b"k", nested_array(levels, overrun))))) + bytes(20))

    def test_truncations_and_flips(self, fast: types.ModuleType) -> None:
        """Seeded truncations and byte flips of valid bodies never crash and agree with upb."""
        rng = seeded()
        trace_body, log_body = sdk_bodies()
        rows = random_rows(rng, 12)
        sources = [
            (trace_body, False),
            (log_body, True),
            (otlp.traces_request(rows).SerializeToString(), False),
            (otlp.logs_request(rows).SerializeToString(), True),
        ]
        for body, is_logs in sources:
            for cut in range(0, len(body), max(1, len(body) // 150)):
                agree(fast, body[:cut], logs=is_logs)
            for _ in range(600):
                agree(fast, mutate(rng, body), logs=is_logs)

    def test_schema_fuzz(self, fast: types.ModuleType) -> None:
        """Random messages built from the protos' descriptors, mutated or not, agree with upb."""
        rng = seeded()
        for i in range(3000):
            fuzzer = SchemaFuzzer(rng, bad_text=rng.choice((0.0, 0.01, 0.05)))
            is_logs = bool(i % 2)
            desc = (ExportLogsServiceRequest if is_logs else ExportTraceServiceRequest).DESCRIPTOR
            body = fuzzer.message(desc)
            if rng.random() < 0.5:
                body = mutate(rng, body)
            agree(fast, body, logs=is_logs, max_records=rng.choice((100_000, 3, 0)))
