"""Cost of tracing an ASGI app: no middleware, atrace's AtraceMiddleware, OpenTelemetry's.

Two measurements in one run. In process: the ASGI app called directly with a synthetic scope,
``receive`` and ``send`` in a loop, µs per request, and the overhead of each middleware as the
difference against no middleware (the precise figure). End to end: uvicorn on 127.0.0.1 in a
child process per case, and concurrent aiohttp clients in this process, requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import DiscardSink

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
CASES = ("none", "atrace", "otel")
# Requests per timed block, and timed blocks per case (interleaved across cases, best kept).
BLOCK = 250
ROUNDS = 200
QUICK_ROUNDS = 60
OTEL_BLOCK = 100
OTEL_ROUNDS = 20
QUICK_OTEL_ROUNDS = 8
# End to end: seconds of load per case, concurrent clients.
DURATION = 10.0
QUICK_DURATION = 3.0
CLIENTS = 16
OVERHEAD_TARGET_US = 5.0
RATIO_TARGET = 5.0
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
LABELS = {
    "none": "no middleware",
    "atrace": "atrace AtraceMiddleware",
    "otel": "OpenTelemetryMiddleware",
    "otel_lean": "OpenTelemetryMiddleware, no send/receive spans",
}


# ---- the apps ---------------------------------------------------------------------------------


def starlette_app(case: str) -> Any:
    """The same one-route Starlette app with no middleware, atrace's, or OpenTelemetry's."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items/{id}", item)], middleware=middleware(case))


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """The least an ASGI app does: a start and a body message."""
    await send(_START)
    await send(_BODY)


_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"2")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}


def middleware(case: str) -> list[Any]:
    from starlette.middleware import Middleware

    if case == "none":
        return []
    if case == "atrace":
        from atrace.integrations.asgi import AtraceMiddleware

        return [Middleware(AtraceMiddleware)]
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    extra = {"exclude_spans": ["receive", "send"]} if case == "otel_lean" else {}
    return [Middleware(OpenTelemetryMiddleware, tracer_provider=otel_provider(), **extra)]


def wrap_bare(case: str) -> Any:
    if case == "none":
        return bare_app
    if case == "atrace":
        from atrace.integrations.asgi import AtraceMiddleware

        return AtraceMiddleware(bare_app)
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    extra = {"exclude_spans": ["receive", "send"]} if case == "otel_lean" else {}
    return OpenTelemetryMiddleware(bare_app, tracer_provider=otel_provider(), **extra)


_provider: Any = None


def otel_provider() -> Any:
    """An SDK TracerProvider with a BatchSpanProcessor exporting to nowhere (made once)."""
    global _provider
    if _provider is None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class NoExporter(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        _provider = TracerProvider()
        _provider.add_span_processor(BatchSpanProcessor(NoExporter()))
    return _provider


def configure_atrace() -> None:
    import atrace

    # The flusher (a task on the serving loop) writes to a sink that keeps nothing.
    atrace.configure(service="bench", sink=DiscardSink(), capacity=100_000, flush_interval=0.2)


# ---- in process -------------------------------------------------------------------------------


def scope_for(path: str, traceparent: bool) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
    ]
    if traceparent:
        headers.append((b"traceparent", TRACEPARENT))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


def in_process(rounds: int, otel_rounds: int) -> dict[str, Any]:
    """µs per request for each app and case: the best of many short interleaved blocks.

    No middleware and atrace alternate block by block, ``rounds`` times, so that both see the
    same machine; OpenTelemetry's cases, two orders of magnitude slower, get ``otel_rounds``
    blocks of OTEL_BLOCK requests each.
    """
    import atrace
    import atrace._pipeline.state

    configure_atrace()
    atrace.info("start")  # starts the flusher on the loop below
    loop = asyncio.new_event_loop()
    ring = atrace._pipeline.state.get_pipeline().ring
    figures: dict[str, Any] = {}
    try:
        for app_kind in ("bare", "starlette"):
            for tp in (False, True):
                key = f"{app_kind}, {'with' if tp else 'no'} traceparent"
                apps = {
                    case: (wrap_bare(case) if app_kind == "bare" else starlette_app(case))
                    for case in (*CASES, "otel_lean")
                }
                scope = scope_for("/items/42", tp)
                times: dict[str, list[float]] = {case: [] for case in apps}
                for app in apps.values():  # warm every path once
                    loop.run_until_complete(_block(app, scope, 200))
                plan = [(c, BLOCK, rounds) for c in CASES[:2]]
                plan += [(c, OTEL_BLOCK, otel_rounds) for c in ("otel", "otel_lean")]
                for group in (plan[:2], plan[2:]):
                    for _ in range(group[0][2]):
                        for case, n, _r in group:
                            gc.collect()
                            t = loop.run_until_complete(_block(apps[case], scope, n))
                            times[case].append(t / n / 1000)
                            # Background work between blocks in a service, untimed here:
                            # atrace's flusher drains its ring, OTel's thread exports its queue
                            # (so that it does not compete for the GIL with the next block).
                            ring.drain(10**9)
                            if case.startswith("otel"):
                                otel_provider().force_flush()
                            loop.run_until_complete(asyncio.sleep(0))
                figures[key] = {
                    case: {"best": min(ts), "median": statistics.median(ts)}
                    for case, ts in times.items()
                }
    finally:
        loop.run_until_complete(atrace.ashutdown())
        loop.close()
    return figures


async def _block(app: Callable[..., Awaitable[None]], scope: dict[str, Any], n: int) -> int:
    receive, send = _receive, _send
    # CPU time of this thread: on a shared machine, time spent descheduled is not the app's.
    clock = time.thread_time_ns
    t0 = clock()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return clock() - t0


# ---- end to end -------------------------------------------------------------------------------


def serve(case: str, port: int) -> None:
    """Child process: uvicorn serving the Starlette app for one case until terminated."""
    import uvicorn

    if case == "atrace":
        configure_atrace()
    uvicorn.run(
        starlette_app(case),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="on",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(url: str, duration: float, clients: int) -> dict[str, float]:
    """Requests/s from ``clients`` concurrent aiohttp clients for ``duration`` seconds."""
    import aiohttp

    done = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + duration

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status == 200:
                            done += 1
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - t0
    return {"rps": done / elapsed, "requests": done, "errors": errors}


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("server did not start")


def end_to_end(duration: float, clients: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    for case in CASES:
        port = free_port()
        cmd = [sys.executable, __file__, "--serve", case, "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env)
        try:
            asyncio.run(wait_listening(port, proc))
            url = f"http://127.0.0.1:{port}/items/42"
            asyncio.run(load(url, min(1.0, duration / 3), clients))  # warm up
            figures[case] = asyncio.run(load(url, duration, clients))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return figures


# ---- report -----------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def report(results: dict[str, Any]) -> None:
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{results['loadavg']}; starlette {_version('starlette')}, uvicorn "
        f"{_version('uvicorn')}, opentelemetry-instrumentation-asgi "
        f"{_version('opentelemetry-instrumentation-asgi')}; atrace emit={results['emit']}"
    )
    print(
        f"\nin process: µs per request, best (median) of {results['rounds']} blocks of "
        f"{BLOCK:,} requests ({results['otel_rounds']} of {OTEL_BLOCK} for OpenTelemetry); "
        "overhead = case - no middleware (best)"
    )
    head = f"{'app / case':<58}{'µs/req':>9}{'median':>9}{'overhead':>10}{'vs atrace':>11}"
    print(head)
    print("-" * len(head))
    for key, cases in results["in_process"].items():
        base = cases["none"]["best"]
        ours = cases["atrace"]["best"] - base
        for case, fig in cases.items():
            over = fig["best"] - base
            line = f"{key + ': ' + LABELS[case]:<58}{fig['best']:>9.2f}{fig['median']:>9.2f}"
            if case != "none":
                line += f"{over:>10.2f}"
                if case.startswith("otel") and ours > 0:
                    line += f"{over / ours:>10.1f}x"
            print(line)
    e2e = results.get("end_to_end")
    if e2e:
        print(
            f"\nend to end: uvicorn (1 worker) and {results['clients']} concurrent aiohttp "
            f"clients on the same {os.cpu_count()} CPUs, {results['duration']:g} s per case"
        )
        base = e2e["none"]["rps"]
        for case, fig in e2e.items():
            print(
                f"{LABELS[case]:<40}{fig['rps']:>10.0f} req/s{fig['rps'] / base:>8.1%}"
                f"  ({fig['requests']:,} requests, {fig['errors']} errors)"
            )
    print("\ntargets:")
    for line in target_lines(results):
        print("  " + line)


def target_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, cases in results["in_process"].items():
        base = cases["none"]["best"]
        ours = cases["atrace"]["best"] - base
        otel = cases["otel"]["best"] - base
        lean = cases["otel_lean"]["best"] - base
        ratio = otel / ours if ours > 0 else float("inf")
        lean_ratio = lean / ours if ours > 0 else float("inf")
        lines.append(
            f"{key}: atrace overhead {ours:.2f} µs "
            f"{'met' if ours <= OVERHEAD_TARGET_US else 'missed'} (<= {OVERHEAD_TARGET_US:g}); "
            f"OTel/atrace {ratio:.1f}x (lean {lean_ratio:.1f}x) "
            f"{'met' if min(ratio, lean_ratio) >= RATIO_TARGET else 'missed'} "
            f"(>= {RATIO_TARGET:g}x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (<= 30 s)")
    parser.add_argument("--rounds", type=int, default=None, help=f"timed blocks ({ROUNDS})")
    parser.add_argument("--duration", type=float, default=None, help=f"load s ({DURATION:g})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
    parser.add_argument("--no-e2e", action="store_true", help="in-process figures only")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--serve", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    otel_rounds = QUICK_OTEL_ROUNDS if args.quick else OTEL_ROUNDS
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)

    import atrace._emit.hot

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "emit": atrace._emit.hot.IMPLEMENTATION,
        "rounds": rounds,
        "otel_rounds": otel_rounds,
        "duration": duration,
        "clients": args.clients,
        "in_process": in_process(rounds, otel_rounds),
    }
    if not args.no_e2e:
        results["end_to_end"] = end_to_end(duration, args.clients)
    report(results)
    if args.json:
        results["targets"] = target_lines(results)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
