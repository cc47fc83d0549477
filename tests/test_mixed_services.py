"""A fleet of atrace and OpenTelemetry services is one trace: an atrace service calls a service on
the OpenTelemetry Python SDK, which calls another atrace service, over real HTTP on 127.0.0.1,
each reporting to the collector (atrace's through its HTTP sink, the SDK's through its own OTLP
exporter). The W3C ``tracestate`` travels the whole way; ``atrace show`` draws one tree with
every span's kind and a link."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import atrace
from _collector import CollectorServer, collector_server  # noqa: F401
from atrace.integrations import aiohttp as atrace_aiohttp
from atrace.integrations import httpx as atrace_httpx
from atrace.sinks.http import HttpSink

ATRACE = str(Path(sys.executable).with_name("atrace"))
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
SCHEDULER = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def otel_service(
    provider: TracerProvider, downstream: str, seen: dict[str, Any]
) -> web.Application:
    """Service B, on the OpenTelemetry SDK alone: a server span from the incoming headers, and a
    client span around its call to C with the SDK's own propagator."""
    tracer = provider.get_tracer("service-b")
    propagator = TraceContextTextMapPropagator()

    async def handle(request: web.Request) -> web.Response:
        parent = propagator.extract(dict(request.headers))
        with tracer.start_as_current_span(
            "GET /b", context=parent, kind=otel.SpanKind.SERVER
        ) as server:
            seen["b_state"] = server.get_span_context().trace_state.to_header()
            with tracer.start_as_current_span("call C", kind=otel.SpanKind.CLIENT) as client:
                headers: dict[str, str] = {}
                propagator.inject(headers, context=otel.set_span_in_context(client))
                async with httpx.AsyncClient() as http:
                    resp = await http.get(f"{downstream}/c", headers=headers)
        return web.Response(text=f"b:{resp.text}")

    app = web.Application()
    app.router.add_get("/b", handle)
    return app


def atrace_service(name: str, downstream: str | None, seen: dict[str, Any]) -> web.Application:
    """Services A and C, on atrace: its aiohttp middleware makes the server span; A calls B
    through atrace's aiohttp client trace config; C does its work in a span with a link."""

    async def handle(request: web.Request) -> web.Response:
        sp = atrace.current_span()
        seen[f"{name}_state"] = sp.trace_state if sp is not None else None
        if downstream is None:
            async with atrace.span("work", links=[(*SCHEDULER, {"job.kind": "nightly"})]):
                return web.Response(text="done")
        async with (
            aiohttp.ClientSession(trace_configs=[atrace_aiohttp.trace_config()]) as session,
            session.get(f"{downstream}/b") as resp,
        ):
            text = await resp.text()
        return web.Response(text=f"{name}:{text}")

    app = web.Application()
    atrace_aiohttp.setup(app)
    app.router.add_get(f"/{name}", handle)
    return app


async def test_atrace_and_opentelemetry_services_make_one_tree(
    collector_server: CollectorServer,  # noqa: F811
) -> None:
    key = await collector_server.create_key("fleet")
    atrace.configure(
        service="shop",
        sink=HttpSink(collector_server.url, api_key=key),
        flush_interval=0.05,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=f"{collector_server.url}/v1/traces",
                headers={"Authorization": f"Bearer {key}"},
            ),
            schedule_delay_millis=50,
        )
    )
    seen: dict[str, Any] = {}
    try:
        async with (
            serving(atrace_service("c", None, seen)) as c_url,
            serving(otel_service(provider, c_url, seen)) as b_url,
            serving(atrace_service("a", b_url, seen)) as a_url,
        ):
            caller = atrace.SpanContext(
                "4bf92f3577b34da6a3ce929d0e0e4736", 0x00F067AA0BA902B7, trace_state=STATE
            )
            async with httpx.AsyncClient(event_hooks=atrace_httpx.async_event_hooks()) as http:
                with atrace.trace_context(caller):
                    async with atrace.span("checkout", kind="client") as root:
                        resp = await http.get(f"{a_url}/a")
            assert resp.text == "a:b:done"
        # The SDK's exporter posts from its own thread (to this loop's collector): flushed
        # there, not on the loop.
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        assert await atrace.aflush(timeout=30)
    finally:
        await asyncio.to_thread(provider.shutdown)
        await atrace.ashutdown()
    # tracestate reached every service, through atrace and the SDK alike.
    assert seen == {"a_state": STATE, "b_state": STATE, "c_state": STATE}

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = await asyncio.create_subprocess_exec(
        ATRACE,
        "show",
        root.trace_id,
        "--url",
        collector_server.url,
        "--api-key",
        key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    lines = out.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    def depth(i: int) -> int:
        return len(lines[i]) - len(lines[i].lstrip(" │├└─"))

    # One tree, each span under its caller, across both kinds of service, kinds shown: the
    # span lines (name, duration, status) one level deeper each time.
    label = re.compile(r"^(.+?) [\d.]+ (?:ns|µs|ms|s) · ")
    spans = [i for i, line in enumerate(lines[1:], 1) if label.match(line.lstrip(" │├└─"))]
    names = [label.match(lines[i].lstrip(" │├└─")).group(1) for i in spans]  # type: ignore[union-attr]
    assert names == [
        "checkout",
        "HTTP GET",  # atrace's httpx hooks, in the caller
        "GET /a",  # A, atrace
        "HTTP GET",  # atrace's aiohttp client, in A
        "GET /b",  # B, the OpenTelemetry SDK
        "call C",  # B's own client span
        "GET /c",  # C, atrace
        "work",
    ], out
    assert [depth(i) for i in spans] == sorted({depth(i) for i in spans}), out
    kinds = {
        "checkout": "client",
        "GET /a": "server",
        "GET /b": "server",
        "call C": "client",
        "GET /c": "server",
    }
    for name, kind in kinds.items():
        assert f" {kind} " in lines[at(name)], (name, out)
    assert "payments" in lines[at("GET /b")] and "shop" in lines[at("GET /c")]
    assert out.count("(parent not found)") == 1  # the caller's own span, sent by no one
    link = lines[at("work") + 1]
    assert f"↪ link trace {SCHEDULER[0]} span {SCHEDULER[1]}" in link
    assert "job.kind=" in link and "nightly" in link


@pytest.fixture(autouse=True)
def _no_global_otel() -> None:
    """The SDK's provider stays local to the test: nothing is set globally."""
    assert not isinstance(otel.get_tracer_provider(), TracerProvider)
