"""The one table from errors to retry verdicts: every SQLSTATE class and exception class it names
gives the verdict pinned here, with asyncpg's and aiohttp's real classes and real failures."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from atrace._delivery.classify import (
    DATA_SQLSTATE_CLASSES,
    SQLSTATE_CLASSES,
    class_rules,
    classify,
    refused_data,
    sqlstate,
)
from atrace.errors import SinkClosedError, SinkHTTPError

pg = asyncpg.exceptions

# The verdict of each SQLSTATE class the table names, written out again here on purpose.
SQLSTATE_VERDICTS = {
    "08": True,
    "40": True,
    "53": True,
    "57": True,
    "58": True,
    "0A": False,
    "22": False,
    "23": False,
    "28": False,
    "3D": False,
    "42": False,
    "XX": False,
}

# The verdict of each exception class the table names (SinkHTTPError's comes from the error).
CLASS_VERDICTS: dict[type[BaseException], bool] = {
    OSError: True,
    TimeoutError: True,
    asyncio.TimeoutError: True,
    EOFError: True,
    SinkClosedError: True,
    pg.InterfaceError: True,
    pg.InternalClientError: True,
    pg.ClientConfigurationError: False,
    pg.UnsupportedClientFeatureError: False,
    pg.UnsupportedServerFeatureError: False,
    pg.ProtocolError: False,
    pg.OutdatedSchemaCacheError: False,
    pg.TargetServerAttributeNotMatched: False,
    # The driver's own DataError (a value it cannot encode), not the server's SQLSTATE 22 one.
    pg._base.DataError: False,
    aiohttp.ClientConnectionError: True,
    aiohttp.ClientConnectorCertificateError: False,
    aiohttp.ClientPayloadError: True,
    aiohttp.ClientError: False,
}


def postgres_classes(code: str) -> list[type[BaseException]]:
    """asyncpg's exception classes for the SQLSTATE class ``code``."""
    return [
        cls
        for cls in vars(pg).values()
        if isinstance(cls, type)
        and issubclass(cls, asyncpg.PostgresError)
        and isinstance(getattr(cls, "sqlstate", None), str)
        and cls.sqlstate[:2] == code
    ]


def bare(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` without running its constructor (some need a live connection)."""
    return cls.__new__(cls)


class TestSqlstate:
    def test_the_table_names_the_pinned_classes(self) -> None:
        """The SQLSTATE classes in the table are exactly those pinned here, with their verdicts."""
        assert {code: retryable for code, (retryable, _) in SQLSTATE_CLASSES.items()} == (
            SQLSTATE_VERDICTS
        )

    @pytest.mark.parametrize(("code", "retryable"), sorted(SQLSTATE_VERDICTS.items()))
    def test_every_asyncpg_class_of_a_sqlstate_class(self, code: str, retryable: bool) -> None:
        """Each asyncpg error of a SQLSTATE class gets that class's verdict, naming its code."""
        classes = postgres_classes(code)
        assert classes, code
        for cls in classes:
            verdict = classify(cls("x"))
            assert verdict.retryable is retryable, cls
            assert verdict.reason == f"SQLSTATE {cls.sqlstate}"
            assert verdict.retry_after is None

    def test_unnamed_sqlstate_classes_are_permanent(self) -> None:
        """A SQLSTATE class the table does not name (P0: a PL/pgSQL RAISE) is not retried."""
        assert not classify(pg.RaiseError("raised")).retryable
        assert not classify(pg.InFailedSQLTransactionError("aborted")).retryable

    def test_refused_data_is_classes_22_and_23(self) -> None:
        """Data and constraint errors are the rows' fault; connection errors are not."""
        assert {"22", "23"} == DATA_SQLSTATE_CLASSES
        assert refused_data(pg.NumericValueOutOfRangeError("big"))
        assert refused_data(pg.UniqueViolationError("dup"))
        assert not refused_data(pg.UndefinedTableError("missing"))
        assert not refused_data(ConnectionResetError())
        assert sqlstate(pg.UniqueViolationError("dup")) == "23505"
        assert sqlstate(ValueError()) is None


class TestClasses:
    def test_the_table_names_the_pinned_classes(self) -> None:
        """The exception classes in the table are those pinned here (plus the two it judges by
        what they carry: PostgresError by SQLSTATE, SinkHTTPError by its own verdict)."""
        named = set(class_rules())
        assert named == set(CLASS_VERDICTS) | {asyncpg.PostgresError, SinkHTTPError}

    @pytest.mark.parametrize(
        ("cls", "retryable"),
        list(CLASS_VERDICTS.items()),
        ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
    )
    def test_each_named_class(self, cls: type[BaseException], retryable: bool) -> None:
        """An exception of a named class gets that class's verdict."""
        verdict = classify(bare(cls))
        assert verdict.retryable is retryable
        assert verdict.retry_after is None

    @pytest.mark.parametrize(
        ("exc", "retryable"),
        [
            # The nearest named class in the MRO decides.
            (ConnectionRefusedError(), True),
            (BrokenPipeError(), True),
            (bare(aiohttp.ServerDisconnectedError), True),
            (bare(aiohttp.ServerTimeoutError), True),
            (bare(aiohttp.InvalidURL), False),
            (bare(aiohttp.TooManyRedirects), False),
            (pg.ConnectionDoesNotExistError("gone"), True),
            (pg.ClientConfigurationError("bad option"), False),
            # Nothing named: a bug or bad data, the same every time.
            (ValueError("bug"), False),
            (TypeError("bug"), False),
            (RuntimeError("Session is closed"), False),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
    )
    def test_subclasses_take_the_nearest_rule(self, exc: BaseException, retryable: bool) -> None:
        """A class the table does not name is judged by its nearest named base, else permanent."""
        assert classify(exc).retryable is retryable

    def test_sink_http_error_carries_its_own_verdict(self) -> None:
        """An HTTP sink error was judged when it was made: status, Retry-After and all."""
        busy = SinkHTTPError(
            "busy", sink="s", batch_size=1, status=503, retryable=True, retry_after=4.0
        )
        verdict = classify(busy)
        assert (verdict.retryable, verdict.retry_after, verdict.reason) == (True, 4.0, "HTTP 503")
        refused = SinkHTTPError("refused", sink="s", batch_size=1, status=400)
        assert not classify(refused).retryable
        silent = SinkHTTPError("no answer", sink="s", batch_size=1, retryable=True)
        assert classify(silent).reason == "no answer"

    def test_classifying_imports_no_library(self) -> None:
        """Without asyncpg or aiohttp imported, classifying imports neither."""
        code = (
            "import sys; from atrace._delivery.classify import classify; "
            "v = classify(ConnectionResetError()); w = classify(ValueError()); "
            "print(v.retryable, w.retryable, 'asyncpg' in sys.modules, 'aiohttp' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["True", "False", "False", "False"]


@pytest.fixture
async def hang_up_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that reads a request and closes without answering."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestRealFailures:
    async def test_postgres_errors(self, pg_schema: tuple[str, str]) -> None:
        """A real server's refusals are permanent; its cutting a session off is retryable."""
        dsn, schema = pg_schema
        victim = await asyncpg.connect(dsn)
        admin = await asyncpg.connect(dsn)
        try:
            await victim.execute(f"CREATE TABLE {schema}.t (k int PRIMARY KEY)")
            await victim.execute(f"INSERT INTO {schema}.t VALUES (1)")
            refusals = (
                f"INSERT INTO {schema}.t VALUES (1)",  # 23505
                "SELECT 'x'::int",  # 22P02
                f"SELECT * FROM {schema}.nope",  # 42P01
            )
            for sql in refusals:
                with pytest.raises(asyncpg.PostgresError) as refused:
                    await victim.execute(sql)
                assert not classify(refused.value).retryable, sql
            await admin.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
            # Depending on when the server's goodbye arrives: 57P01, a lost connection, or a
            # connection asyncpg finds left mid-operation (InternalClientError).
            with pytest.raises(Exception) as cut:
                await victim.execute("SELECT 1")
            assert classify(cut.value).retryable, repr(cut.value)
        finally:
            victim.terminate()
            await admin.close()

    async def test_postgres_unreachable(self) -> None:
        """Nothing listening where PostgreSQL should be: retryable."""
        with pytest.raises(OSError) as refused:
            await asyncpg.connect(f"postgresql://u@127.0.0.1:{closed_port()}/db", timeout=5)
        assert classify(refused.value).retryable

    async def test_http_failures(self, hang_up_server: int) -> None:
        """A refused connection and a server hanging up mid-request are retryable; a URL
        aiohttp cannot use is not."""
        async with aiohttp.ClientSession() as session:
            failures = []
            for url in (
                f"http://127.0.0.1:{closed_port()}/",
                f"http://127.0.0.1:{hang_up_server}/",
                "http://[::1/",
            ):
                with pytest.raises(aiohttp.ClientError) as failed:
                    async with session.post(url, data=b"x"):
                        pass
                failures.append(failed.value)
        refused, hung_up, bad_url = failures
        assert isinstance(refused, aiohttp.ClientConnectorError)
        assert isinstance(hung_up, aiohttp.ServerDisconnectedError)
        assert classify(refused).retryable and classify(hung_up).retryable
        assert not classify(bad_url).retryable
