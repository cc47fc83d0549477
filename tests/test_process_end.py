"""The end of a server process: every request's span and logs reach PostgreSQL.

Each server runs as a real subprocess (apps in ``tests/apps``), configured with a 30 s flush
interval, so that only the flush at process end can write what the requests emitted; the test
sends requests, then the signal at once, waits for the exit and reads the rows back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import atrace
from _helpers import wait_until
from atrace.integrations.asgi import AtraceMiddleware
from atrace.testing import MemorySink

APPS = Path(__file__).parent / "apps"
REQUESTS = 12
EXIT_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _env(dsn: str, schema: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ATRACE_", "OTEL_", "PYTHONPATH"))
    }
    env.update(
        ATRACE_SINK=dsn,
        ATRACE_SCHEMA=schema,
        ATRACE_FLUSH_INTERVAL="30",
        ATRACE_SHUTDOWN_TIMEOUT="10",
        ATRACE_SPILL_MAX_BYTES="0",  # what is not written must show as missing, not spilled
        PYTHONPATH=str(APPS),
        PYTHONFAULTHANDLER="1",
    )
    for name in ("ATRACE_PUREPYTHON", "ATRACE_DATA_DIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _command(server: str, port: int) -> list[str]:
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    quiet = ["--log-level", "warning"]
    return {
        "uvicorn": [sys.executable, "-m", "uvicorn", "process_end_app:app", *bind, *quiet],
        "uvicorn-workers-2": [
            *(sys.executable, "-m", "uvicorn", "process_end_app:app", *bind, *quiet),
            *("--workers", "2"),
        ],
        "uvicorn-no-lifespan": [sys.executable, "-m", "uvicorn", "process_end_app:bare", *bind],
        "uvicorn-run": [sys.executable, str(APPS / "uvicorn_run.py"), str(port)],
        "gunicorn": [
            *(_bin("gunicorn"), "-k", "uvicorn.workers.UvicornWorker", "-w", "2"),
            *("-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "process_end_app:app"),
        ],
        "hypercorn": [
            *(_bin("hypercorn"), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20"),
            "process_end_app:app",
        ],
        "asyncio": [sys.executable, str(APPS / "asyncio_server.py"), str(port)],
    }[server]


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def _rows(dsn: str, schema: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.records")
        if exists is None:
            return []
        return list(await conn.fetch(f"SELECT kind, name, message, attrs FROM {schema}.records"))
    finally:
        await conn.close()


async def _serve_then_signal(
    server: str, sig: signal.Signals, dsn: str, schema: str
) -> tuple[int, str]:
    """Start ``server``, send it REQUESTS requests, then ``sig``; its exit code and stderr."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *_command(server, port),
        env=_env(dsn, schema),
        cwd=APPS,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    try:
        await wait_until(lambda: _listening(port), describe=lambda: proc.returncode)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            for n in range(REQUESTS):
                response = await client.get(f"/r/{n}", headers={"connection": "close"})
                assert response.status_code == 200
        proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
        except asyncio.TimeoutError:
            # Hung at exit: SIGABRT makes faulthandler print every thread's stack.
            proc.send_signal(signal.SIGABRT)
            await asyncio.wait_for(proc.wait(), 10)
            raise AssertionError(
                f"{server} did not exit after {sig.name}:\n{(await stderr).decode()}"
            ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, (await stderr).decode(errors="replace")


async def _assert_everything_written(dsn: str, schema: str, detail: str) -> None:
    rows = await _rows(dsn, schema)
    logs = sorted(
        r["message"] for r in rows if r["kind"] == 0 and r["message"] != "lifespan shutdown"
    )
    spans = sorted(r["attrs"] for r in rows if r["kind"] == 3 and r["name"] == "GET")
    expected = sorted(f"handled {n}" for n in range(REQUESTS))
    assert logs == expected, detail
    assert len(spans) == REQUESTS, detail
    assert all('"/r/' in attrs for attrs in spans), detail


SERVERS = [
    # server, signal, the exit code when the signal itself ends the process (None: not checked)
    pytest.param("uvicorn", signal.SIGTERM, -signal.SIGTERM, id="uvicorn-sigterm"),
    pytest.param("uvicorn-workers-2", signal.SIGTERM, None, id="uvicorn-workers-2-sigterm"),
    pytest.param(
        "uvicorn-no-lifespan", signal.SIGTERM, -signal.SIGTERM, id="uvicorn-app-without-lifespan"
    ),
    pytest.param("uvicorn-run", signal.SIGTERM, -signal.SIGTERM, id="uvicorn.run-lifespan-off"),
    pytest.param("gunicorn", signal.SIGTERM, None, id="gunicorn-uvicorn-worker-sigterm"),
    pytest.param("hypercorn", signal.SIGTERM, None, id="hypercorn-sigterm"),
    pytest.param("asyncio", signal.SIGTERM, -signal.SIGTERM, id="asyncio.run-sigterm"),
    pytest.param("asyncio", signal.SIGINT, None, id="asyncio.run-sigint"),
]


class TestProcessEnd:
    @pytest.mark.parametrize(("server", "sig", "exit_code"), SERVERS)
    async def test_every_request_is_written(
        self,
        server: str,
        sig: signal.Signals,
        exit_code: int | None,
        pg_schema: tuple[str, str],
    ) -> None:
        """A server stopped by a signal right after its last response has written every
        request's span and log, and still exits as the signal says."""
        dsn, schema = pg_schema
        code, stderr = await _serve_then_signal(server, sig, dsn, schema)
        if exit_code is not None:
            assert code == exit_code, stderr
        await _assert_everything_written(dsn, schema, f"exit code {code}: {stderr}")


# ---- when the SIGTERM handler is installed ---------------------------------------------------

INSTALL_CHECKS = """
import signal, threading
import atrace
from atrace._pipeline import signals
from atrace.testing import capture

TERM = signal.SIGTERM
seen = {}
with capture():
    atrace.info("captured")
seen["capture"] = signal.getsignal(TERM) is signal.SIG_DFL
thread = threading.Thread(target=lambda: atrace.configure(sink="console"))
thread.start()
thread.join()
seen["other thread"] = signal.getsignal(TERM) is signal.SIG_DFL
signal.signal(TERM, signal.SIG_IGN)
atrace.configure(sink="console")
seen["ignored"] = signal.getsignal(TERM) is signal.SIG_IGN
def theirs(signum, frame):
    pass
signal.signal(TERM, theirs)
atrace.configure(sink="console")
seen["someone else's"] = signal.getsignal(TERM) is theirs
signal.signal(TERM, signal.SIG_DFL)
atrace.configure(sink="console")
atrace.configure(sink="console")
seen["default"] = signals.installed()
print(seen)
"""


class TestInstall:
    @pytest.mark.parametrize("switch", [None, "0"])
    def test_installed_only_over_the_default_action(self, switch: str | None) -> None:
        """The handler replaces SIGTERM's default action only, in the main thread, never for a
        capture, and never with ATRACE_SIGNALS=0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACE_SIGNALS")}
        if switch is not None:
            env["ATRACE_SIGNALS"] = switch
        done = subprocess.run(
            [sys.executable, "-c", INSTALL_CHECKS], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        expected = {
            "capture": True,
            "other thread": True,
            "ignored": True,
            "someone else's": True,
            "default": switch is None,
        }
        assert done.stdout.strip() == str(expected)

    def test_bad_switch_value_is_refused(self) -> None:
        """An ATRACE_SIGNALS value that is neither on nor off is a ConfigError naming it."""
        with pytest.raises(atrace.ConfigError, match="ATRACE_SIGNALS"):
            atrace.config.signals({"ATRACE_SIGNALS": "maybe"})


# ---- a signal while the main thread holds what the flush needs ----------------------------------

HELD_LOCK = """
import os, signal, sys, time
import atrace
atrace.configure(service="process-end", flush_interval=30, shutdown_timeout=1)
atrace.info("before")
pipeline = atrace._pipeline.state.current()
with pipeline._lock:  # what stop_nowait() takes: the flush cannot stop this pipeline
    os.kill(os.getpid(), signal.SIGTERM)
    print("survived", flush=True)
"""


class TestHeldLock:
    async def test_signal_while_holding_the_pipeline_lock_ends_the_process(
        self, pg_schema: tuple[str, str]
    ) -> None:
        """SIGTERM while the main thread holds a lock the flush needs: the flush gives up after
        shutdown_timeout and the process still ends by SIGTERM, instead of hanging."""
        dsn, schema = pg_schema
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", HELD_LOCK),
            env=_env(dsn, schema),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT)
        assert proc.returncode == -signal.SIGTERM, err.decode()
        assert b"survived" not in out


# ---- the middleware's lifespan ------------------------------------------------------------------


async def _run_lifespan(app: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Drive ``app`` through startup and shutdown as a server does; what it sent, and what the
    sink held when each message reached the server."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    sent: list[dict[str, Any]] = []
    held: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        held.append(",".join(r["message"] for r in SINK.records() if r["message"]))

    await asyncio.wait_for(app({"type": "lifespan", "state": {}}, inbox.get, send), 10)
    return sent, held


SINK = MemorySink()


class TestLifespan:
    @pytest.fixture(autouse=True)
    def _sink(self) -> None:
        SINK.rows.clear()
        atrace.configure(service="test", sink=SINK, flush_interval=30)

    async def test_messages_pass_through_and_records_are_written_first(self) -> None:
        """The app gets the server's messages and the server gets the app's, unchanged; what
        the app's shutdown logged is written before the server hears the shutdown is over."""
        received: list[dict[str, Any]] = []
        complete = {"type": "lifespan.shutdown.complete", "extra": 1}

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            assert scope == {"type": "lifespan", "state": {}}
            while True:
                message = await receive()
                received.append(message)
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    atrace.info("app shutdown")
                    await send(complete)
                    return

        sent, held = await _run_lifespan(AtraceMiddleware(app))
        assert received == [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        assert sent == [{"type": "lifespan.startup.complete"}, complete]
        assert held == ["", "app shutdown"]

    @pytest.mark.parametrize("refusal", ["raises", "returns"])
    async def test_app_without_lifespan_support(self, refusal: str) -> None:
        """An app that fails or returns before reading a lifespan message: the middleware
        answers startup and shutdown itself, writing atrace's records before the last answer."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if refusal == "raises":
                raise RuntimeError("http only")

        atrace.info("served")
        sent, held = await _run_lifespan(AtraceMiddleware(app))
        assert sent == [
            {"type": "lifespan.startup.complete"},
            {"type": "lifespan.shutdown.complete"},
        ]
        assert held == ["", "served"]

    async def test_lifespan_failure_of_the_app_is_raised(self) -> None:
        """An app that reads a lifespan message and then fails is not covered up."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            raise RuntimeError("startup failed")

        with pytest.raises(RuntimeError, match="startup failed"):
            await _run_lifespan(AtraceMiddleware(app))
