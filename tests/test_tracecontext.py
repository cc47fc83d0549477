"""W3C Trace Context Level 2, rule by rule: the parser, extract() on every carrier, real HTTP hops.

The cases follow the Recommendation's text (https://www.w3.org/TR/trace-context-2/, sections
"Traceparent Header", "Tracestate Header", "Mutating the traceparent/tracestate Field",
"Processing Model") and the W3C test suite (``test/test.py`` of w3c/trace-context); each id
quotes the rule it checks. One table of cases runs three ways: against the parser, against
``extract()`` on each kind of carrier, and over HTTP through a traced server whose handler calls
a second server with a traced client, which reports the header lines it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import importlib
import json
import pickle
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import httpx
import pytest
import uvicorn
from aiohttp import web
from multidict import CIMultiDict
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import atrace
from atrace._emit.runtime import runtime
from atrace._emit.tracecontext import (
    extract,
    format_traceparent,
    inject,
    parse_traceparent,
    parse_tracestate,
    remote_parent,
)
from atrace._records import ORIGIN
from atrace._speedups import FORCE_TWINS
from atrace.integrations import aiohttp as atrace_aiohttp
from atrace.integrations.asgi import AtraceMiddleware
from atrace.integrations.httpx import Transport, async_event_hooks
from atrace.integrations.wsgi import AtraceWSGIMiddleware
from atrace.testing import MemorySink, capture

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
TP = f"00-{TRACE}-{PARENT}-01"
TP00 = f"00-{TRACE}-{PARENT}-00"


class Joined(NamedTuple):
    """What a valid traceparent gives: the caller's trace, span and flags, and the tracestate."""

    trace_id: str
    parent: str
    flags: int
    state: str


def joined(flags: int = 1, state: str = "", trace_id: str = TRACE) -> Joined:
    return Joined(trace_id, PARENT, flags, state)


# Trace ids sent in the cases: a restarted trace must be none of them.
SENT_TRACE_IDS = {TRACE, "12345678901234567890123456789011"}
# The characters the tracestate grammar allows (the W3C suite's "all allowed characters").
KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
# 32 list-members in four header lines, as the W3C suite sends them.
MEMBERS_32 = [
    ",".join(f"bar{i:02d}={i:02d}" for i in range(n, min(n + 10, 33))) for n in (1, 11, 21, 31)
]


def case(rule: str, lines: list[tuple[str, str]], expected: Joined | None) -> Any:
    """One request's trace header lines and what they must give (None: a new trace)."""
    return pytest.param(lines, expected, id=rule)


TRACEPARENT_CASES = [
    case("tp valid: version 00, sampled", [("traceparent", TP)], joined(1)),
    case("tp valid: flags 00 (caller did not sample)", [("traceparent", TP00)], joined(0)),
    case(
        "tp flags: 02 random trace id flag received",
        [("traceparent", f"00-{TRACE}-{PARENT}-02")],
        joined(2),
    ),
    case(
        "tp flags: 03 sampled and random", [("traceparent", f"00-{TRACE}-{PARENT}-03")], joined(3)
    ),
    case(
        "tp flags: ff is a bit field, every bit read",
        [("traceparent", f"00-{TRACE}-{PARENT}-ff")],
        joined(0xFF),
    ),
    case("tp header name: TraceParent is the same header", [("TraceParent", TP)], joined()),
    case("tp header name: TrAcEpArEnT is the same header", [("TrAcEpArEnT", TP)], joined()),
    case("tp header name: TRACEPARENT is the same header", [("TRACEPARENT", TP)], joined()),
    case("tp header name: trace-parent is another header", [("trace-parent", TP)], None),
    case("tp header name: trace.parent is another header", [("trace.parent", TP)], None),
    case(
        "tp duplicated: two traceparent headers are invalid",
        [("traceparent", f"00-{TRACE[:-1]}1-{PARENT}-01"), ("traceparent", TP)],
        None,
    ),
    case("tp duplicated: the same value twice is invalid", [("traceparent", TP)] * 2, None),
    case("tp version 00: nothing may follow the flags ('.')", [("traceparent", TP + ".")], None),
    case(
        "tp version 00: no more fields after the flags",
        [("traceparent", TP + "-what-the-future-will-be-like")],
        None,
    ),
    case(
        "tp higher version: parsed by the 00 format",
        [("traceparent", f"cc-{TRACE}-{PARENT}-01")],
        joined(1),
    ),
    case(
        "tp higher version: more fields after a dash are allowed",
        [("traceparent", f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like")],
        joined(1),
    ),
    case(
        "tp higher version: flags MUST be followed by a dash or the end",
        [("traceparent", f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like")],
        None,
    ),
    case(
        "tp higher version: shorter than 55 characters restarts",
        [("traceparent", f"cc-{TRACE}-{PARENT}-1")],
        None,
    ),
    case(
        "tp higher version: unknown flags read, sent as zero",
        [("traceparent", f"cc-{TRACE}-{PARENT}-07-x")],
        joined(7),
    ),
    case("tp version: ff is invalid", [("traceparent", f"ff-{TRACE}-{PARENT}-01")], None),
    case("tp version: illegal '.0'", [("traceparent", f".0-{TRACE}-{PARENT}-01")], None),
    case("tp version: illegal '0.'", [("traceparent", f"0.-{TRACE}-{PARENT}-01")], None),
    case("tp version: uppercase hex 'CC'", [("traceparent", f"CC-{TRACE}-{PARENT}-01")], None),
    case("tp version: uppercase hex '0A'", [("traceparent", f"0A-{TRACE}-{PARENT}-01")], None),
    case("tp version: too long '000'", [("traceparent", f"000-{TRACE}-{PARENT}-01")], None),
    case("tp version: too long '0000'", [("traceparent", f"0000-{TRACE}-{PARENT}-01")], None),
    case("tp version: too short '0'", [("traceparent", f"0-{TRACE}-{PARENT}-01")], None),
    case(
        "tp trace-id: all zeroes forbidden", [("traceparent", f"00-{'0' * 32}-{PARENT}-01")], None
    ),
    case(
        "tp trace-id: illegal character first",
        [("traceparent", f"00-.{TRACE[1:]}-{PARENT}-01")],
        None,
    ),
    case(
        "tp trace-id: illegal character last",
        [("traceparent", f"00-{TRACE[:-1]}.-{PARENT}-01")],
        None,
    ),
    case(
        "tp trace-id: lowercase hex only",
        [("traceparent", f"00-{'ABCDEF' + TRACE[6:]}-{PARENT}-01")],
        None,
    ),
    case("tp trace-id: too long (33)", [("traceparent", f"00-{TRACE}3-{PARENT}-01")], None),
    case("tp trace-id: too short (31)", [("traceparent", f"00-{TRACE[:-1]}-{PARENT}-01")], None),
    case(
        "tp parent-id: all zeroes forbidden", [("traceparent", f"00-{TRACE}-{'0' * 16}-01")], None
    ),
    case(
        "tp parent-id: illegal character first",
        [("traceparent", f"00-{TRACE}-.{PARENT[1:]}-01")],
        None,
    ),
    case(
        "tp parent-id: illegal character last",
        [("traceparent", f"00-{TRACE}-{PARENT[:-1]}.-01")],
        None,
    ),
    case(
        "tp parent-id: lowercase hex only",
        [("traceparent", f"00-{TRACE}-ABCDEF{PARENT[6:]}-01")],
        None,
    ),
    case("tp parent-id: too long (17)", [("traceparent", f"00-{TRACE}-{PARENT}7-01")], None),
    case("tp parent-id: too short (15)", [("traceparent", f"00-{TRACE}-{PARENT[:-1]}-01")], None),
    case("tp trace-flags: illegal '.0'", [("traceparent", f"00-{TRACE}-{PARENT}-.0")], None),
    case("tp trace-flags: illegal '0.'", [("traceparent", f"00-{TRACE}-{PARENT}-0.")], None),
    case("tp trace-flags: illegal '+1'", [("traceparent", f"00-{TRACE}-{PARENT}-+1")], None),
    case("tp trace-flags: too long '001'", [("traceparent", f"00-{TRACE}-{PARENT}-001")], None),
    case("tp trace-flags: too short '1'", [("traceparent", f"00-{TRACE}-{PARENT}-1")], None),
    case("tp trace-flags: uppercase hex '0A'", [("traceparent", f"00-{TRACE}-{PARENT}-0A")], None),
    case("tp separators: '_' is not '-'", [("traceparent", f"00_{TRACE}-{PARENT}-01")], None),
    case("tp empty value restarts", [("traceparent", "")], None),
    case("tp OWS: leading space", [("traceparent", " " + TP)], joined()),
    case("tp OWS: leading tab", [("traceparent", "\t" + TP)], joined()),
    case("tp OWS: trailing space", [("traceparent", TP + " ")], joined()),
    case("tp OWS: trailing tab", [("traceparent", TP + "\t")], joined()),
    case("tp OWS: both sides", [("traceparent", "\t " + TP + " \t")], joined()),
]

TRACESTATE_CASES = [
    case(
        "ts included with traceparent: inherited",
        [("traceparent", TP00), ("tracestate", "foo=1,bar=2")],
        joined(0, "foo=1,bar=2"),
    ),
    case(
        "ts without traceparent: MUST be discarded",
        [("tracestate", "foo=1,bar=2")],
        None,
    ),
    case(
        "ts with an invalid traceparent: MUST NOT be parsed",
        [("traceparent", f"ff-{TRACE}-{PARENT}-01"), ("tracestate", "foo=1")],
        None,
    ),
    case(
        "ts header name: TraceState is the same header",
        [("traceparent", TP00), ("TraceState", "foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts header name: TrAcEsTaTe is the same header",
        [("traceparent", TP00), ("TrAcEsTaTe", "foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts header name: TRACESTATE is the same header",
        [("traceparent", TP00), ("TRACESTATE", "foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts header name: trace-state is another header",
        [("traceparent", TP00), ("trace-state", "foo=1")],
        joined(0),
    ),
    case(
        "ts header name: trace.state is another header",
        [("traceparent", TP00), ("trace.state", "foo=1")],
        joined(0),
    ),
    case(
        "ts empty header: MUST be accepted, SHOULD NOT be sent",
        [("traceparent", TP00), ("tracestate", "")],
        joined(0),
    ),
    case(
        "ts empty line after a member",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "")],
        joined(0, "foo=1"),
    ),
    case(
        "ts empty line before a member",
        [("traceparent", TP00), ("tracestate", ""), ("tracestate", "foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts multiple headers: combined in order (RFC 9110 field order)",
        [
            ("traceparent", TP00),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ],
        joined(0, "foo=1,bar=2,rojo=1,congo=2,baz=3"),
    ),
    case(
        "ts duplicated keys: foo=1,foo=1 keeps one foo=1",
        [("traceparent", TP00), ("tracestate", "foo=1,foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts duplicated keys: MAY discard the later duplicate",
        [("traceparent", TP00), ("tracestate", "foo=1,foo=2")],
        joined(0, "foo=1"),
    ),
    case(
        "ts duplicated keys across headers keep the first",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "foo=2")],
        joined(0, "foo=1"),
    ),
    case(
        "ts all allowed characters, key without @",
        [("traceparent", TP00), ("tracestate", f"{KEY_CHARS}={VALUE_CHARS}")],
        joined(0, f"{KEY_CHARS}={VALUE_CHARS}"),
    ),
    case(
        "ts all allowed characters, key with @",
        [("traceparent", TP00), ("tracestate", f"{KEY_CHARS}@a-z0-9_-*/={VALUE_CHARS}")],
        joined(0, f"{KEY_CHARS}@a-z0-9_-*/={VALUE_CHARS}"),
    ),
    case(
        "ts OWS: spaces and tabs around members are ignored",
        [("traceparent", TP00), ("tracestate", "foo=1 \t , \t bar=2, \t baz=3")],
        joined(0, "foo=1,bar=2,baz=3"),
    ),
    case(
        "ts OWS: tabs and spaces mixed",
        [("traceparent", TP00), ("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")],
        joined(0, "foo=1,bar=2,baz=3"),
    ),
    case(
        "ts OWS: leading space",
        [("traceparent", TP00), ("tracestate", " foo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts OWS: leading tab",
        [("traceparent", TP00), ("tracestate", "\tfoo=1")],
        joined(0, "foo=1"),
    ),
    case(
        "ts OWS: trailing space is not part of the value",
        [("traceparent", TP00), ("tracestate", "foo=1 ")],
        joined(0, "foo=1"),
    ),
    case(
        "ts OWS: trailing tab",
        [("traceparent", TP00), ("tracestate", "foo=1\t")],
        joined(0, "foo=1"),
    ),
    case(
        "ts OWS: both sides",
        [("traceparent", TP00), ("tracestate", "\t foo=1 \t")],
        joined(0, "foo=1"),
    ),
    case(
        "ts empty list members are allowed and skipped",
        [("traceparent", TP00), ("tracestate", ",foo=1,, ,\t,bar=2,")],
        joined(0, "foo=1,bar=2"),
    ),
    case(
        "ts value: leading spaces MUST be preserved",
        [("traceparent", TP00), ("tracestate", "foo=  1")],
        joined(0, "foo=  1"),
    ),
    case(
        "ts key: 'foo ' (space) is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "foo =1")],
        joined(0),
    ),
    case(
        "ts key: uppercase is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "FOO=1")],
        joined(0),
    ),
    case(
        "ts key: '.' is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "foo.bar=1")],
        joined(0),
    ),
    case(
        "ts key: MUST begin with a letter or digit (not '_')",
        [("traceparent", TP00), ("tracestate", "_foo=1")],
        joined(0),
    ),
    case(
        "ts key: may begin with a digit",
        [("traceparent", TP00), ("tracestate", "1foo=1")],
        joined(0, "1foo=1"),
    ),
    case(
        "ts key: '@' after the first character (foo@)",
        [("traceparent", TP00), ("tracestate", "foo@=1,bar=2")],
        joined(0, "foo@=1,bar=2"),
    ),
    case(
        "ts key: starting with '@' is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "@foo=1,bar=2")],
        joined(0),
    ),
    case(
        "ts key: '@' more than once (foo@@bar)",
        [("traceparent", TP00), ("tracestate", "foo@@bar=1,bar=2")],
        joined(0, "foo@@bar=1,bar=2"),
    ),
    case(
        "ts key: '@' more than once (foo@bar@baz)",
        [("traceparent", TP00), ("tracestate", "foo@bar@baz=1,bar=2")],
        joined(0, "foo@bar@baz=1,bar=2"),
    ),
    case(
        "ts key: 256 characters",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "z" * 256 + "=1")],
        joined(0, "foo=1," + "z" * 256 + "=1"),
    ),
    case(
        "ts key: 257 characters discards the header",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "z" * 257 + "=1")],
        joined(0),
    ),
    case(
        "ts key: 241 + @ + 14 characters",
        [
            ("traceparent", TP00),
            ("tracestate", "foo=1"),
            ("tracestate", f"{'t' * 241}@{'v' * 14}=1"),
        ],
        joined(0, f"foo=1,{'t' * 241}@{'v' * 14}=1"),
    ),
    case(
        "ts key: 242 + @v characters (one 256-character key grammar)",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", f"{'t' * 242}@v=1")],
        joined(0, f"foo=1,{'t' * 242}@v=1"),
    ),
    case(
        "ts key: t@ + 15 characters (one 256-character key grammar)",
        [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", f"t@{'v' * 15}=1")],
        joined(0, f"foo=1,t@{'v' * 15}=1"),
    ),
    case(
        "ts value: '=' is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "foo=bar=baz")],
        joined(0),
    ),
    case(
        "ts value: empty is illegal, header discarded",
        [("traceparent", TP00), ("tracestate", "foo=,bar=3")],
        joined(0),
    ),
    case(
        "ts value: a tab inside is illegal",
        [("traceparent", TP00), ("tracestate", "foo=a\tb")],
        joined(0),
    ),
    case(
        "ts value: 256 characters",
        [("traceparent", TP00), ("tracestate", "foo=" + "v" * 256)],
        joined(0, "foo=" + "v" * 256),
    ),
    case(
        "ts value: 257 characters discards the header",
        [("traceparent", TP00), ("tracestate", "foo=" + "v" * 257)],
        joined(0),
    ),
    case(
        "ts member: without '=' is illegal",
        [("traceparent", TP00), ("tracestate", "foo")],
        joined(0),
    ),
    case(
        "ts member count: 32 list-members inherited",
        [("traceparent", TP00), *[("tracestate", m) for m in MEMBERS_32]],
        joined(0, ",".join(MEMBERS_32)),
    ),
    case(
        "ts member count: 33 list-members discard the header",
        [("traceparent", TP00), *[("tracestate", m) for m in MEMBERS_32], ("tracestate", "x=1")],
        joined(0),
    ),
    case(
        "ts member count: empty members do not count",
        [("traceparent", TP00), *[("tracestate", m) for m in MEMBERS_32], ("tracestate", " ")],
        joined(0, ",".join(MEMBERS_32)),
    ),
    case(
        "ts invalid: failure MUST NOT affect traceparent",
        [("traceparent", f"00-{TRACE}-{PARENT}-03"), ("tracestate", "FOO=1")],
        joined(3),
    ),
]

CASES = TRACEPARENT_CASES + TRACESTATE_CASES


def lines_of(lines: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in lines if key.lower() == name]


def check(ctx: atrace.SpanContext | None, expected: Joined | None) -> None:
    """The context matches what the case expects: its ids, flags and tracestate, or nothing."""
    if expected is None:
        assert ctx is None
        return
    assert ctx is not None
    assert ctx.trace_id == expected.trace_id
    assert ctx.span_id is not None and f"{ctx.span_id & (2**64 - 1):016x}" == expected.parent
    assert ctx.flags == expected.flags and ctx.sampled == bool(expected.flags & 1)
    assert ctx.trace_state == expected.state


# ---- (a) the parser --------------------------------------------------------------------------


class TestParser:
    @pytest.mark.parametrize(("lines", "expected"), CASES)
    def test_case(self, lines: list[tuple[str, str]], expected: Joined | None) -> None:
        """The W3C rule holds for the parser on the lines of each header, as text and as bytes."""
        parents = lines_of(lines, "traceparent")
        states = lines_of(lines, "tracestate")
        for convert in (str, lambda v: v.encode("latin-1")):
            got = remote_parent(
                [convert(v) for v in parents] or None, [convert(v) for v in states] or None
            )
            check(got, expected)
        if len(parents) == 1:
            check(parse_traceparent(parents[0], states), expected)

    def test_one_function(self) -> None:
        """extract(), the integrations and atrace.parse_traceparent share the one parser."""
        assert atrace.parse_traceparent is parse_traceparent
        assert atrace.extract is extract and atrace.inject is inject
        assert (
            importlib.import_module("atrace._emit.context").parse_traceparent is parse_traceparent
        )
        for name in ("asgi", "aiohttp", "wsgi"):
            module = importlib.import_module(f"atrace.integrations.{name}")
            assert module.remote_parent is remote_parent

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(f"{TP},{TP}", id="a comma: two values a server joined"),
            pytest.param(f"cc-{TRACE}-{PARENT}-01-x,cc-{TRACE}-{PARENT}-01-x", id="joined v-cc"),
            pytest.param(f"00-{TRACE}-{PARENT}- 1", id="flags ' 1'"),
            pytest.param(f"00-{TRACE}-{PARENT}-1 ", id="flags '1 '"),
            pytest.param(f"+0-{TRACE}-{PARENT}-01", id="version '+0'"),
            pytest.param(f"\n{TP}", id="a newline is not OWS"),
            pytest.param(f"00-{TRACE}-{PARENT}-0\u00e9", id="non-ASCII"),
        ],
    )
    def test_more_invalid_values(self, value: str) -> None:
        """Values that int() or a lenient split would accept are refused."""
        assert parse_traceparent(value) is None
        assert parse_traceparent(value.encode("utf-8")) is None

    def test_not_text(self) -> None:
        """A value that is neither str nor bytes is no traceparent."""
        assert parse_traceparent(None) is None  # type: ignore[arg-type]
        assert parse_traceparent(55) is None  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("value", "normalised"),
        [
            ("", ""),
            (" , ,", ""),
            ("a=1", "a=1"),
            (b"a=1 ,b=2", "a=1,b=2"),
            (["a=1", b"b=2"], "a=1,b=2"),
            (("a=1", "", "b=2"), "a=1,b=2"),
            ("a=1,A=2", None),
            ("a=1,b=\u00e9", None),
            ("a=1,b=2 =", None),
        ],
    )
    def test_tracestate_alone(self, value: Any, normalised: str | None) -> None:
        """parse_tracestate joins lines, drops OWS and empty members, None when to discard."""
        assert parse_tracestate(value) == normalised


# ---- (b) extract() on every carrier -------------------------------------------------------------


def case_variants(name: str) -> Iterator[str]:
    """The name, then spellings of it in other cases: a plain dict holds a repeated header so."""
    yield name
    yield name.upper()
    for i in range(len(name)):
        yield name[:i] + name[i].swapcase() + name[i + 1 :]


def as_dict(lines: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in lines:
        out[next(v for v in case_variants(name) if v not in out)] = value
    return out


def as_environ(lines: list[tuple[str, str]]) -> dict[str, str]:
    """A WSGI environ as wsgiref builds it: repeated headers joined with commas, values stripped."""
    env: dict[str, str] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    for name, value in lines:
        key = "HTTP_" + name.replace("-", "_").upper()
        env[key] = env[key] + "," + value.strip() if key in env else value.strip()
    return env


def as_message(lines: list[tuple[str, str]]) -> email.message.Message:
    msg = email.message.Message()
    for name, value in lines:
        msg[name] = value
    return msg


CARRIERS: dict[str, Callable[[list[tuple[str, str]]], Any]] = {
    "dict": as_dict,
    "CIMultiDict": lambda lines: CIMultiDict(lines),
    "starlette Headers": lambda lines: Headers(
        raw=[(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in lines]
    ),
    "httpx Headers": lambda lines: httpx.Headers(lines),
    "ASGI raw list": lambda lines: [(n.lower().encode(), v.encode()) for n, v in lines],
    "WSGI environ": as_environ,
    "email Message": as_message,
}


class TestExtract:
    @pytest.mark.parametrize("carrier", list(CARRIERS))
    @pytest.mark.parametrize(("lines", "expected"), CASES)
    def test_case(
        self, carrier: str, lines: list[tuple[str, str]], expected: Joined | None
    ) -> None:
        """The W3C rule holds for extract() on this carrier, header names in any case."""
        check(extract(CARRIERS[carrier](lines)), expected)

    def test_plain_dict_any_case(self) -> None:
        """A plain dict is read without regard to the case of its keys."""
        ctx = extract({"TraceParent": TP00, "TRACESTATE": "a=1"})
        assert ctx is not None and (ctx.flags, ctx.trace_state) == (0, "a=1")

    def test_dict_of_lists(self) -> None:
        """A dict whose values are lists holds a repeated header's lines."""
        assert extract({"traceparent": [TP, TP]}) is None
        ctx = extract({"traceparent": [TP], "tracestate": ["a=1", "b=2"]})
        assert ctx is not None and ctx.trace_state == "a=1,b=2"

    def test_x_trace_id_fallback(self) -> None:
        """Without a usable traceparent, X-Trace-ID names the trace; its tracestate is ignored."""
        ctx = extract({"X-Trace-Id": TRACE, "tracestate": "a=1", "traceparent": "garbage"})
        assert ctx is not None and ctx.trace_id == TRACE and ctx.span_id is None
        assert (ctx.flags, ctx.trace_state) == (1, "")
        assert extract({"x-trace-id": "0" * 32}) is None

    def test_carrier_with_get_only(self) -> None:
        """An object that only answers get(name) is still read."""

        class Carrier:
            def get(self, name: str) -> str | None:
                return {"traceparent": TP00, "tracestate": "a=1"}.get(name)

        ctx = extract(Carrier())
        assert ctx is not None and (ctx.flags, ctx.trace_state) == (0, "a=1")


# ---- flags and tracestate carried by spans, and written out ------------------------------------


def hot_modules() -> list[Any]:
    """The emit hot path's twin, and its compiled module unless the twins are forced."""
    found = [pytest.param(importlib.import_module("atrace._emit._hot_py"), id="python")]
    if not FORCE_TWINS:
        found.append(pytest.param(importlib.import_module("atrace._emit._hot"), id="cython"))
    return found


@pytest.fixture(params=hot_modules())
def hot(request: pytest.FixtureRequest) -> Any:
    """Each implementation of the emit hot path, both in every run (as tests/test_speedups.py)."""
    return request.param


class TestSpanContext:
    def test_backward_compatible_constructor(self, hot: Any) -> None:
        """SpanContext(trace_id, span_id=None, sampled=True) still builds what it did."""
        ctx = hot.SpanContext(TRACE, 5)
        assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.flags, ctx.trace_state) == (
            TRACE,
            5,
            True,
            1,
            "",
        )
        off = hot.SpanContext(TRACE, 5, False)
        assert (off.sampled, off.flags) == (False, 0)
        assert hot.SpanContext(TRACE).span_id is None

    def test_flags_and_trace_state_keywords(self, hot: Any) -> None:
        """flags= and trace_state= are kept; sampled= sets bit 0 of the flags when given."""
        ctx = hot.SpanContext(TRACE, 5, flags=2, trace_state="a=1")
        assert (ctx.flags, ctx.sampled, ctx.trace_state) == (2, False, "a=1")
        assert hot.SpanContext(TRACE, 5, True, flags=2).flags == 3
        assert hot.SpanContext(TRACE, 5, False, flags=0xFF).flags == 0xFE

    @pytest.mark.parametrize("flags", [-1, 256, "01", 1.0, True, None])
    def test_bad_flags(self, hot: Any, flags: Any) -> None:
        """Flags outside one byte are a ConfigError naming flags."""
        with pytest.raises(atrace.ConfigError, match="flags"):
            hot.SpanContext(TRACE, 5, flags=flags)

    def test_bad_trace_state(self, hot: Any) -> None:
        """A tracestate that is not text is a ConfigError naming trace_state."""
        with pytest.raises(atrace.ConfigError, match="trace_state"):
            hot.SpanContext(TRACE, 5, trace_state=None)

    def test_immutable_value(self, hot: Any) -> None:
        """Fields cannot change; equality, hash, pickle and replace see flags and tracestate."""
        ctx = hot.SpanContext(TRACE, 5, flags=3, trace_state="a=1")
        for name in ("flags", "trace_state", "sampled"):
            with pytest.raises(AttributeError):
                setattr(ctx, name, 0)
        assert ctx != hot.SpanContext(TRACE, 5, flags=1, trace_state="a=1")
        assert ctx != hot.SpanContext(TRACE, 5, flags=3)
        same = hot.SpanContext(TRACE, 5, flags=3, trace_state="a=1")
        assert ctx == same and hash(ctx) == hash(same)
        assert pickle.loads(pickle.dumps(ctx)) == ctx
        assert ctx.replace(sampled=False).flags == 2
        assert ctx.replace(flags=0).as_dict() == {
            "trace_id": TRACE,
            "span_id": 5,
            "flags": 0,
            "trace_state": "a=1",
        }
        assert repr(ctx) == (
            f"SpanContext(trace_id={TRACE!r}, span_id='0000000000000005', flags=0x03, "
            "trace_state='a=1')"
        )


class TestSpanFlags:
    def test_root_span_is_sampled_and_random(self, hot: Any) -> None:
        """A trace atrace starts gets 01 (sampled) and 02, as its ids' right-most 7 bytes are
        random."""
        sp = hot.Span("root")
        assert sp.flags == 0  # not started
        hot.begin(sp, None)
        try:
            assert (sp.flags, sp.trace_state) == (3, "")
            assert sp in runtime.open_spans
        finally:
            runtime.open_spans.discard(sp)

    @pytest.mark.parametrize(
        ("flags", "state", "inherited"),
        [(1, "", 1), (0, "a=1", 0), (2, "a=1,b=2", 2), (3, "", 3), (0xFF, "x=y", 3)],
    )
    def test_inherited_from_a_remote_parent(
        self, hot: Any, flags: int, state: str, inherited: int
    ) -> None:
        """A span keeps its remote parent's sampled and random flags (others are zeroed) and its
        tracestate, and passes them on to its children."""
        parent = hot.SpanContext(TRACE, 5, flags=flags, trace_state=state)
        sp, child = hot.Span("server"), hot.Span("child")
        hot.begin(sp, parent)
        hot.begin(child, sp)
        try:
            for s in (sp, child):
                assert (s.flags, s.trace_state, s.trace_id) == (inherited, state, TRACE)
                assert (s in runtime.open_spans) == bool(inherited & 1)
        finally:
            runtime.open_spans.discard(sp)
            runtime.open_spans.discard(child)

    def test_duck_typed_parent(self, hot: Any) -> None:
        """Any parent with trace_id and span_id works; without flags it counts as sampled."""

        class Parent:
            trace_id = TRACE
            span_id = 5

        sp = hot.Span("x")
        hot.begin(sp, Parent())
        runtime.open_spans.discard(sp)
        assert (sp.flags, sp.trace_state, sp.parent_id) == (1, "", 5)

    def test_unsampled_span_is_never_pushed(
        self, hot: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ending a span under a not-sampled parent pushes nothing, even when it failed."""
        pushed: list[Any] = []
        monkeypatch.setattr(runtime, "push", pushed.append)
        parent = hot.SpanContext(TRACE, 5, False)
        for exc in (None, ValueError("boom")):
            sp = hot.Span("quiet")
            hot.begin(sp, parent)
            hot.end(sp, exc)
            assert sp.end_ns and sp.status == (2 if exc else 0) and sp.error is None
        sp = hot.Span("recorded")
        hot.begin(sp, hot.SpanContext(TRACE, 5, True))
        hot.end(sp, None)
        assert pushed == [sp]

    def test_records_carry_kind_state_flags_and_status_message(
        self, hot: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both implementations put the span's kind, tracestate, flags, status message and
        links at the end of its start and end records (the start record has no status message
        yet, and leaves the links to the end record)."""
        monkeypatch.setattr(runtime, "push", lambda _: None)
        sp = hot.span("joined", kind="client")
        hot.begin(sp, hot.SpanContext(TRACE, 5, flags=1, trace_state="a=1"))
        sp.set_status("error", "refused")
        assert hot.start_record(sp)[-5:] == (3, "a=1", 1, None, None)
        hot.end(sp, None)
        assert sp._record()[-5:] == (3, "a=1", 1, "refused", None)
        root = hot.Span("root")
        hot.begin(root, None)
        runtime.open_spans.discard(root)
        hot.end(root, None)
        assert root._record()[-5:] == (1, None, 3, None, None) and root.status == 0
        with pytest.raises(atrace.ConfigError, match="kind"):
            hot.span("bad", kind="sideways")

    def test_record_exception(self, hot: Any) -> None:
        """record_exception fails an unsampled span without taking the exception; a span not
        started yet still takes it, as it may be recorded."""
        quiet = hot.Span("quiet")
        hot.begin(quiet, hot.SpanContext(TRACE, 5, False))
        quiet.record_exception(ValueError("a"))
        assert quiet.status == 2 and quiet.error is None
        fresh = hot.Span("fresh")
        fresh.record_exception(ValueError("b"))
        assert fresh.status == 2 and fresh.error is not None
        hot.end(quiet, None)


class TestOut:
    def test_format_uses_the_span_flags(self) -> None:
        """traceparent carries the span's flags: 00 under a not-sampled caller, 02 kept."""
        for flags in (0, 1, 2, 3):
            ctx = atrace.SpanContext(TRACE, 5, flags=flags)
            with atrace.trace_context(ctx), atrace.span("x") as sp:
                assert format_traceparent() == f"00-{TRACE}-{sp.span_id_hex}-{flags:02x}"

    def test_unknown_flags_go_out_as_zero(self) -> None:
        """Flags this version does not define are written as zero, even passing through."""
        ctx = atrace.SpanContext(TRACE, 5, flags=0xFD)
        assert format_traceparent(ctx) == f"00-{TRACE}-0000000000000005-01"
        with atrace.trace_context(ctx), atrace.span("x") as sp:
            assert sp.flags == 1

    def test_inject_writes_tracestate_unchanged(self) -> None:
        """inject() adds tracestate as received (atrace adds no entry of its own), and none
        when the trace has none."""
        ctx = atrace.SpanContext(TRACE, 5, False, trace_state="rojo=00f067aa0ba902b7,congo=t61")
        with atrace.trace_context(ctx), atrace.span("x") as sp:
            headers: dict[str, str] = atrace.inject({})
        assert headers == {
            "traceparent": f"00-{TRACE}-{sp.span_id_hex}-00",
            "tracestate": "rojo=00f067aa0ba902b7,congo=t61",
        }
        with atrace.span("root"):
            assert set(atrace.inject({})) == {"traceparent"}

    def test_inject_outside_a_span(self) -> None:
        """Outside any span nothing is written; a trace without a parent span writes nothing."""
        assert atrace.inject({}) == {}
        with atrace.trace_context(TRACE):
            assert atrace.inject({}) == {}

    def test_trace_context_flags(self) -> None:
        """trace_context(): a fresh trace is sampled and random (03); a given id only sampled
        (01), since how it was made cannot be told; a SpanContext is used as it is."""
        with atrace.trace_context() as fresh:
            assert fresh.flags == 3
        with atrace.trace_context(TRACE, parent_id=PARENT) as given:
            assert given.flags == 1
        remote = atrace.SpanContext(TRACE, 5, flags=0, trace_state="a=1")
        with atrace.trace_context(remote) as same:
            assert same is remote
        with pytest.raises(atrace.ConfigError, match="parent_id"):
            atrace.trace_context(remote, parent_id=PARENT)

    def test_tracer_flags(self) -> None:
        """A Tracer continuing a given trace id is 01; with only a parent id (a fresh id), 03."""
        given = atrace.Tracer(parent_id=PARENT, trace_id=TRACE)
        fresh = atrace.Tracer(parent_id=PARENT)
        with given.span("a") as a:
            pass
        with fresh.span("b") as b:
            pass
        assert (a.flags, b.flags) == (1, 3)


# ---- the sampled flag honoured -------------------------------------------------------------------


class TestSampledParent:
    async def test_no_span_rows_but_logs(self, configure_memory: MemorySink) -> None:
        """Under a 00 parent no span row is written, for the span or its descendants; logs are,
        with its trace and span ids (OpenTelemetry's ParentBased(ALWAYS_ON) sampler)."""
        with (
            atrace.trace_context(atrace.SpanContext(TRACE, 5, False)),
            atrace.span("server") as server,
        ):
            atrace.info("inside")
            with atrace.span("child") as child:
                atrace.warning("deeper")
        await atrace.aflush()
        assert configure_memory.spans() == []
        logs = configure_memory.logs()
        assert [(r["message"], r["trace_id"], r["span_id"]) for r in logs] == [
            ("inside", TRACE, server.span_id),
            ("deeper", TRACE, child.span_id),
        ]

    async def test_sampled_parent_is_recorded(self, configure_memory: MemorySink) -> None:
        """Under a 01 parent the spans are written as usual."""
        with (
            atrace.trace_context(atrace.SpanContext(TRACE, 5, True)),
            atrace.span("server"),
            atrace.span("child"),
        ):
            pass
        await atrace.aflush()
        assert sorted(r["name"] for r in configure_memory.spans()) == ["child", "server"]

    async def test_rows_carry_flags_and_trace_state(self, configure_memory: MemorySink) -> None:
        """Span rows store the trace flags and the tracestate of the span's context: a new trace
        is sampled and random (3) with no tracestate (null, not ""); a remote parent's are
        inherited by the span and its children. Logs carry neither."""
        with atrace.span("root"), atrace.span("root-child"):
            pass
        remote = atrace.SpanContext(TRACE, 5, flags=1, trace_state="a=1,b=2")
        with atrace.trace_context(remote), atrace.span("joined"), atrace.span("joined-child"):
            atrace.info("inside")
        with atrace.trace_context(atrace.SpanContext(TRACE, 5, True)), atrace.span("plain"):
            pass
        await atrace.aflush()
        got = {r["name"]: (r["trace_flags"], r["trace_state"]) for r in configure_memory.spans()}
        assert got == {
            "root": (3, None),
            "root-child": (3, None),
            "joined": (1, "a=1,b=2"),
            "joined-child": (1, "a=1,b=2"),
            "plain": (1, None),
        }
        (log,) = configure_memory.logs()
        assert (log["trace_flags"], log["trace_state"], log["span_kind"]) == (None, None, None)

    async def test_not_announced_while_running(self, configure_memory: MemorySink) -> None:
        """A long unsampled span is never announced by a start row: it is not tracked as open."""
        with atrace.trace_context(atrace.SpanContext(TRACE, 5, False)), atrace.span("long") as sp:
            assert sp not in runtime.open_spans
            assert atrace.metrics().open_spans == 0
            await atrace.aflush()
        await atrace.aflush()
        assert configure_memory.records() == []

    def test_capture(self) -> None:
        """atrace.testing.capture() sees the logs of an unsampled trace and none of its spans."""
        with capture() as cap:
            with atrace.trace_context(atrace.SpanContext(TRACE, 5, flags=2)), atrace.span("q"):
                atrace.info("still logged")
            with atrace.span("loud"):
                pass
        assert [s.name for s in cap.spans] == ["loud"]
        assert cap.messages == ["still logged"]

    async def test_exception_in_unsampled_span(self, configure_memory: MemorySink) -> None:
        """An exception through an unsampled span fails it without claiming the exception:
        the log that records it is the first record of it."""
        with atrace.trace_context(atrace.SpanContext(TRACE, 5, False)):
            try:
                with atrace.span("quiet") as sp:
                    raise KeyError("k")
            except KeyError:
                atrace.exception("handled")
        assert sp.status == 2
        await atrace.aflush()
        (log,) = configure_memory.logs()
        assert log["error_type"] == "KeyError" and ORIGIN not in (log["attrs"] or {})


# ---- (c) over real HTTP --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1 (a free port); yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in this loop; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def wsgiref_serving(app: Any) -> Iterator[str]:
    """wsgiref serving ``app`` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def downstream_app() -> web.Application:
    """An untraced server answering with every header line it received, in order."""

    async def record(request: web.Request) -> web.Response:
        lines = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response(lines)

    app = web.Application()
    app.router.add_get("/record", record)
    return app


def asgi_upstream(downstream: str, client: httpx.AsyncClient) -> Any:
    """Starlette under the ASGI middleware; the handler calls downstream with httpx hooks."""

    async def call(request: Request) -> Response:
        atrace.info("calling downstream")
        answer = await client.get(f"{downstream}/record")
        return Response(answer.content, media_type="application/json")

    return AtraceMiddleware(Starlette(routes=[Route("/call", call)]))


def aiohttp_upstream(downstream: str, session: aiohttp.ClientSession) -> web.Application:
    """aiohttp under atrace's middleware; the handler calls downstream with trace_config()."""

    async def call(request: web.Request) -> web.Response:
        atrace.info("calling downstream")
        async with session.get(f"{downstream}/record") as answer:
            return web.Response(body=await answer.read(), content_type="application/json")

    app = web.Application(middlewares=[atrace_aiohttp.middleware])
    app.router.add_get("/call", call)
    return app


def wsgi_upstream(downstream: str, client: httpx.Client) -> Any:
    """A WSGI app under the WSGI middleware; it calls downstream through httpx's Transport."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        atrace.info("calling downstream")
        body = client.get(f"{downstream}/record").content
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return AtraceWSGIMiddleware(app)


@contextlib.asynccontextmanager
async def chain(kind: str) -> AsyncIterator[str]:
    """A downstream recorder and a traced upstream of ``kind`` calling it with one client for
    all its requests; yields the upstream URL."""
    async with aiohttp_serving(downstream_app()) as downstream:
        if kind == "asgi+httpx hooks":
            async with (
                httpx.AsyncClient(event_hooks=async_event_hooks()) as client,
                uvicorn_serving(asgi_upstream(downstream, client)) as url,
            ):
                yield url
        elif kind == "aiohttp+trace_config":
            async with (
                aiohttp.ClientSession(trace_configs=[atrace_aiohttp.trace_config()]) as session,
                aiohttp_serving(aiohttp_upstream(downstream, session)) as url,
            ):
                yield url
        else:
            with (
                httpx.Client(transport=Transport()) as sync_client,
                wsgiref_serving(wsgi_upstream(downstream, sync_client)) as url,
            ):
                yield url


CHAINS = ["asgi+httpx hooks", "aiohttp+trace_config", "wsgi+httpx Transport"]


async def send(url: str, lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """GET /call with these header lines exactly (repeated ones included), over a raw socket;
    the header lines the downstream server received."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = ["GET /call HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in lines]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"200", answer
    body = rest.partition(b"\r\n\r\n")[2]
    return [(k, v) for k, v in json.loads(body)]


SENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def check_forwarded(received: list[tuple[str, str]], expected: Joined | None) -> None:
    """What the downstream server got: one lowercase traceparent of version 00 (trace kept or
    restarted, a new parent id, the flags), and the tracestate forwarded or none."""
    parents = [(k, v) for k, v in received if k.lower() == "traceparent"]
    states = [v for k, v in received if k.lower() == "tracestate"]
    assert len(parents) == 1 and parents[0][0] == "traceparent", received
    match = SENT.fullmatch(parents[0][1])
    assert match is not None, parents
    trace_id, parent, flags = match.groups()
    if expected is None:
        # A new trace, started here: sampled and random (03), with no tracestate.
        assert trace_id not in SENT_TRACE_IDS and flags == "03" and states == []
        return
    assert trace_id == expected.trace_id and parent != expected.parent
    assert flags == f"{expected.flags & 3:02x}"
    assert states == ([expected.state] if expected.state else [])


class TestOverHTTP:
    @pytest.mark.parametrize("kind", CHAINS)
    async def test_cases(
        self, configure_memory: MemorySink, kind: str, subtests: pytest.Subtests
    ) -> None:
        """Every W3C rule of the table holds end to end, one subtest per rule: the server reads
        the headers as sent, its client writes them to the next server."""
        async with chain(kind) as url:
            for param in CASES:
                lines, expected = param.values
                with subtests.test(msg=param.id):
                    check_forwarded(await send(url, lines), expected)  # type: ignore[arg-type]

    @pytest.mark.parametrize("kind", CHAINS)
    async def test_unsampled_caller(self, configure_memory: MemorySink, kind: str) -> None:
        """A 00 caller: no span row on this hop, the handler's log kept, and the call out goes
        with 00, the same trace and the tracestate unchanged."""
        async with chain(kind) as url:
            received = await send(url, [("traceparent", TP00), ("tracestate", "congo=t61rcWkgMzE")])
        check_forwarded(received, joined(0, "congo=t61rcWkgMzE"))
        await atrace.aflush()
        assert configure_memory.spans() == []
        (log,) = configure_memory.logs()
        assert log["message"] == "calling downstream" and log["trace_id"] == TRACE
        assert log["span_id"] is not None

    @pytest.mark.parametrize("kind", CHAINS)
    async def test_sampled_caller(self, configure_memory: MemorySink, kind: str) -> None:
        """A 01 caller: the server span (a child of the caller) and the client span are written,
        and the call out names the client span."""
        async with chain(kind) as url:
            received = await send(url, [("traceparent", TP)])
        await atrace.aflush()
        rows = configure_memory.spans()
        (client,) = [r for r in rows if r["name"] == "HTTP GET"]
        (server,) = [r for r in rows if r is not client]
        assert server["parent_id"] == int(PARENT, 16) and client["parent_id"] == server["span_id"]
        (tp,) = [v for k, v in received if k == "traceparent"]
        assert tp == f"00-{TRACE}-{client['span_id'] & (2**64 - 1):016x}-01"
