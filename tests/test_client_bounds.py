"""Bodies read from a collector or an OTLP endpoint are bounded: a hostile 200 streaming 400 MiB
costs a client or a sink bounded memory, and a client says the answer was too large."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from atrace._pipeline.encode import Encoder
from atrace.client import DEFAULT_MAX_RESPONSE, AsyncClient, Client
from atrace.errors import CollectorError, ConfigError
from atrace.sinks import Batch
from atrace.sinks.http import HttpSink
from atrace.sinks.otlp import OtlpSink

MIB = 1024 * 1024
HOSTILE = 400 * MIB
_CHUNK = b"x" * MIB


async def _stream(request: web.Request) -> web.StreamResponse:
    """200 with 400 MiB of body, chunked (no length to refuse up front)."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for _ in range(HOSTILE // MIB):
            await response.write(_CHUNK)
    except (ConnectionError, RuntimeError):  # the reader hung up: what it should do
        return response
    await response.write_eof()
    return response


async def _declared(request: web.Request) -> web.StreamResponse:
    """200 declaring 400 MiB up front, then sending little."""
    response = web.StreamResponse(status=200, headers={"Content-Length": str(HOSTILE)})
    await response.prepare(request)
    try:
        await response.write(b"[")
        await asyncio.sleep(30)
    except (ConnectionError, RuntimeError):
        pass
    return response


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    """The URL of a real aiohttp server on 127.0.0.1 answering every path with a huge 200."""
    app = web.Application()
    app.router.add_route("*", "/declared/{tail:.*}", _declared)
    app.router.add_route("*", "/{tail:.*}", _stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _peak(call: Callable[[], Awaitable[Any]]) -> tuple[int, BaseException | None]:
    """Peak traced memory while ``call`` runs, and what it raised."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    error: BaseException | None = None
    try:
        await call()
    except Exception as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def _batch() -> Batch:
    enc = Encoder(service="svc", environment="test", host="h", pid=1)
    now = time.time_ns()
    return Batch(
        enc.rows([(0, now, 20, None, None, None, None, 0, None, "app", "m", {}, None, None)])
    )


def test_default_is_documented() -> None:
    """The client's bound defaults to 64 MiB and refuses a bound that is not a positive int."""
    assert DEFAULT_MAX_RESPONSE == 64 * MIB
    assert Client("http://127.0.0.1:9").max_response == 64 * MIB
    with pytest.raises(ConfigError):
        Client("http://127.0.0.1:9", max_response=0)


async def test_async_client_refuses_a_huge_answer(hostile: str) -> None:
    """AsyncClient reads at most max_response bytes of a 400 MiB answer and raises a
    CollectorError saying it was too large."""
    async with AsyncClient(hostile, "k", max_response=8 * MIB, timeout=60) as client:
        peak, error = await _peak(lambda: client.trace("0" * 32))
    assert isinstance(error, CollectorError), error
    assert "larger than max_response" in str(error)
    assert peak < 64 * MIB, peak


async def test_async_client_default_bound(hostile: str) -> None:
    """With the default bound, a 400 MiB answer still costs far less than 400 MiB."""
    async with AsyncClient(hostile, "k", timeout=60) as client:
        peak, error = await _peak(lambda: client.search_page())
    assert isinstance(error, CollectorError), error
    assert peak < 200 * MIB, peak


async def test_sync_client_refuses_a_huge_answer(hostile: str) -> None:
    """Client (blocking) reads at most max_response bytes and raises CollectorError."""
    client = Client(hostile, "k", max_response=8 * MIB, timeout=60)
    peak, error = await _peak(lambda: asyncio.to_thread(client.trace, "0" * 32))
    assert isinstance(error, CollectorError), error
    assert "larger than max_response" in str(error)
    assert peak < 64 * MIB, peak


async def test_declared_length_refused_before_reading(hostile: str) -> None:
    """An answer declaring more than max_response is refused without waiting for its body."""
    async with AsyncClient(hostile + "/declared", "k", max_response=MIB, timeout=60) as client:
        with pytest.raises(CollectorError, match="larger than max_response"):
            await asyncio.wait_for(client.trace("0" * 32), 20)
    client_sync = Client(hostile + "/declared", "k", max_response=MIB, timeout=60)
    with pytest.raises(CollectorError, match="larger than max_response"):
        await asyncio.wait_for(asyncio.to_thread(client_sync.trace, "0" * 32), 20)


async def test_http_sink_reads_at_most_its_bound(hostile: str) -> None:
    """A 200 with 400 MiB of body is a delivered batch for the HTTP sink, which reads no more
    than 1 MiB of it."""
    sink = HttpSink(hostile + "/v1/ingest", timeout=60)
    await sink.open()
    try:
        peak, error = await _peak(lambda: sink.write(_batch()))
    finally:
        await sink.close()
    assert error is None, error
    assert peak < 32 * MIB, peak


async def test_otlp_sink_reads_at_most_its_bound(hostile: str) -> None:
    """The OTLP sink takes a 200 with 400 MiB of body as an export done, reading 1 MiB of it."""
    sink = OtlpSink(hostile, protocol="http/json", timeout=60)
    await sink.open()
    try:
        peak, error = await _peak(lambda: sink.write(_batch()))
    finally:
        await sink.close()
    assert error is None, error
    assert peak < 32 * MIB, peak
