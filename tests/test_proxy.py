"""The fault-injection TCP proxy, between asyncpg and the session's real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import asyncpg
import pytest

from _helpers import wait_until
from _pg import PgServer
from _proxy import TCPProxy, _FrontendScanner

# What asyncpg raises when the socket dies under it. TimeoutError is an OSError too, so the
# tests that expect one of these also check that it is not a timeout.
CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)


async def connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=10)


def assert_connection_error(exc: BaseException) -> None:
    assert isinstance(exc, CONNECTION_ERRORS), repr(exc)
    assert not isinstance(exc, TimeoutError), repr(exc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestUrlFor:
    async def test_replaces_host_and_port_only(self) -> None:
        """User, password, database and query survive; host and port become the proxy's."""
        async with TCPProxy("127.0.0.1", 1) as proxy:
            url = proxy.url_for("postgresql://app:s3cret@db.example:6543/appdb?sslmode=disable")
            assert url == f"postgresql://app:s3cret@127.0.0.1:{proxy.port}/appdb?sslmode=disable"

    async def test_postgres_scheme_without_user(self) -> None:
        """A ``postgres://`` URL with no user or port keeps its scheme and database."""
        async with TCPProxy("127.0.0.1", 1) as proxy:
            assert proxy.url_for("postgres://db/x") == f"postgres://127.0.0.1:{proxy.port}/x"

    async def test_drops_host_and_port_from_the_query(self) -> None:
        """Query-string host and port, which would bypass the proxy, are removed."""
        async with TCPProxy("127.0.0.1", 1) as proxy:
            url = proxy.url_for("postgresql://u@/db?host=/tmp&port=5432&application_name=a")
            assert url == f"postgresql://u@127.0.0.1:{proxy.port}/db?application_name=a"

    async def test_rejects_other_schemes(self) -> None:
        """A DSN that is not a postgresql:// URL is refused."""
        async with TCPProxy("127.0.0.1", 1) as proxy:
            with pytest.raises(ValueError, match="postgresql://"):
                proxy.url_for("host=db port=5432")


class TestForwarding:
    async def test_query_works_and_counters_move(self, pg_server: PgServer) -> None:
        """A query runs through the proxy, which counts the connection and bytes both ways."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            conn = await connect(proxy.url_for(pg_server.dsn))
            try:
                assert (proxy.connections, proxy.active) == (1, 1)
                up, down = proxy.bytes_up, proxy.bytes_down
                assert up > 0 and down > 0
                assert await conn.fetchval("SELECT 41 + 1") == 42
                assert proxy.bytes_up > up and proxy.bytes_down > down
            finally:
                await conn.close()
            await wait_until(lambda: proxy.active == 0)
            assert (proxy.connections, proxy.refused, proxy.commits_cut) == (1, 0, 0)

    async def test_client_closing_early_is_harmless(self, pg_server: PgServer) -> None:
        """A client that hangs up before saying anything leaves the proxy serving others."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            _, writer = await asyncio.open_connection(proxy.host, proxy.port)
            writer.transport.abort()
            await wait_until(
                lambda: proxy.connections == 1 and proxy.active == 0 and not proxy.tasks
            )
            conn = await connect(proxy.url_for(pg_server.dsn))
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()

    async def test_server_closing_reaches_the_client(self, pg_server: PgServer) -> None:
        """A backend the server terminates closes the proxied connection too."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            conn = await connect(proxy.url_for(pg_server.dsn))
            direct = await connect(pg_server.dsn)
            try:
                pid = conn.get_server_pid()
                assert await direct.fetchval("SELECT pg_terminate_backend($1)", pid)
                # Both ends closed before the next query: asyncpg reads the server's FATAL
                # notice asynchronously, and a query racing it meets an internal state error.
                await wait_until(lambda: proxy.active == 0 and conn.is_closed())
                with pytest.raises(CONNECTION_ERRORS) as info:
                    await conn.fetchval("SELECT 1")
                assert_connection_error(info.value)
            finally:
                conn.terminate()
                await direct.close()

    async def test_unreachable_target_fails_the_client(self) -> None:
        """When the server cannot be reached the client's connect fails, and nothing leaks."""
        async with TCPProxy("127.0.0.1", free_port()) as proxy:
            with pytest.raises(CONNECTION_ERRORS) as info:
                await connect(proxy.url_for("postgresql://u@h/db"))
            assert_connection_error(info.value)
            await wait_until(lambda: not proxy.tasks)
            assert proxy.active == 0


class TestCut:
    async def test_cut_breaks_connections_until_restore(self, pg_server: PgServer) -> None:
        """cut() kills open connections and refuses new ones; restore() lets them through."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            url = proxy.url_for(pg_server.dsn)
            conn = await connect(url)
            try:
                proxy.cut()
                assert proxy.active == 0
                with pytest.raises(CONNECTION_ERRORS) as info:
                    await conn.fetchval("SELECT 1")
                assert_connection_error(info.value)
                with pytest.raises(CONNECTION_ERRORS) as info:
                    await connect(url)
                assert_connection_error(info.value)
                assert proxy.refused >= 1
            finally:
                conn.terminate()
            proxy.restore()
            conn = await connect(url)
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()


class TestSlow:
    async def test_slow_delays_and_slow_zero_undoes(self, pg_server: PgServer) -> None:
        """Under slow(0.5) a query misses a 0.1 s deadline; after slow(0) a fresh one is served."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            url = proxy.url_for(pg_server.dsn)
            conn = await connect(url)
            try:
                proxy.slow(0.5)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 0.1)
            finally:
                # The timed-out query left asyncpg cancelling it; a new connection is simpler.
                conn.terminate()
            proxy.slow(0)
            conn = await connect(url)
            try:
                assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 5) == 1
            finally:
                await conn.close()

    async def test_negative_latency_is_refused(self) -> None:
        """slow() with a negative latency raises ValueError."""
        async with TCPProxy("127.0.0.1", 1) as proxy:
            with pytest.raises(ValueError, match="latency"):
                proxy.slow(-1)


class TestCutAfterCommit:
    @pytest.mark.parametrize("protocol", ["simple", "extended"])
    async def test_commit_lands_but_is_never_acknowledged(
        self, pg_server: PgServer, pg_schema: tuple[str, str], protocol: str
    ) -> None:
        """The COMMIT takes effect on the server while its client sees a broken connection."""
        dsn, schema = pg_schema
        direct = await connect(dsn)
        try:
            await direct.execute(f"CREATE TABLE {schema}.t (x int)")
            async with TCPProxy(pg_server.host, pg_server.port) as proxy:
                url = proxy.url_for(dsn)
                proxy.cut_after_commit()
                conn = await connect(url)
                try:
                    await conn.execute("BEGIN")
                    await conn.execute(f"INSERT INTO {schema}.t VALUES (1)")
                    with pytest.raises(CONNECTION_ERRORS) as info:
                        if protocol == "simple":
                            await conn.execute("COMMIT")
                        else:
                            # fetch* go through Parse/Bind/Execute, not a simple Query.
                            await conn.fetchval("COMMIT")
                    assert_connection_error(info.value)
                finally:
                    conn.terminate()
                assert await direct.fetchval(f"SELECT count(*) FROM {schema}.t") == 1
                assert proxy.commits_cut == 1

                conn = await connect(url)
                try:
                    await conn.execute("BEGIN")
                    await conn.execute(f"INSERT INTO {schema}.t VALUES (2)")
                    await conn.execute("COMMIT")
                finally:
                    await conn.close()
                assert await direct.fetchval(f"SELECT count(*) FROM {schema}.t") == 2
                assert proxy.commits_cut == 1
        finally:
            await direct.close()

    async def test_other_open_connections_are_spared(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """Only the connection that commits first is cut; another one keeps working."""
        dsn, schema = pg_schema
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            url = proxy.url_for(dsn)
            victim, bystander = await connect(url), await connect(url)
            try:
                proxy.cut_after_commit()
                assert await bystander.fetchval("SELECT 1") == 1
                await victim.execute(f"CREATE TABLE {schema}.t (x int)")
                with pytest.raises(CONNECTION_ERRORS):
                    await victim.execute(f"BEGIN; INSERT INTO {schema}.t VALUES (1); COMMIT")
                assert await bystander.fetchval(f"SELECT count(*) FROM {schema}.t") == 1
                assert (proxy.commits_cut, proxy.active) == (1, 1)
            finally:
                victim.terminate()
                await bystander.close()


class TestFrontendScanner:
    @staticmethod
    def message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!i", len(body) + 4) + body

    def startup(self) -> bytes:
        ssl_request = struct.pack("!ii", 8, 80877103)
        params = b"user\0postgres\0database\0commitlog\0\0"
        return ssl_request + struct.pack("!ii", 8 + len(params), 3 << 16) + params

    def test_finds_commit_split_across_chunks(self) -> None:
        """A COMMIT query is found even when it arrives one byte at a time."""
        stream = self.startup() + self.message(b"Q", b"select 'no'\0")
        stream += self.message(b"Q", b"commit;\0")
        scanner = _FrontendScanner()
        hits = [scanner.feed(stream[i : i + 1]) for i in range(len(stream))]
        assert hits.count(True) == 1 and hits[-1]

    def test_ignores_commit_outside_sql(self) -> None:
        """The word in a startup parameter or a Bind value does not count."""
        stream = self.startup() + self.message(b"B", b"\0\0\0\0\0\x01\0\0\0\x06COMMIT\0\0")
        assert not _FrontendScanner().feed(stream)

    def test_parsed_commit_counts_at_execute(self) -> None:
        """A Parse of COMMIT triggers only at the Execute that runs it."""
        scanner = _FrontendScanner()
        assert not scanner.feed(self.startup())
        assert not scanner.feed(self.message(b"P", b"s1\0COMMIT\0\0\0") + self.message(b"S", b""))
        assert scanner.feed(self.message(b"B", b"\0s1\0" + bytes(6)) + self.message(b"E", bytes(5)))

    def test_gives_up_on_non_postgres_bytes(self) -> None:
        """Bytes that are not a startup packet (TLS, say) switch the scanner off."""
        scanner = _FrontendScanner()
        assert not scanner.feed(b"\x16\x03\x01\x02\x00" + bytes(100))
        assert not scanner.feed(self.message(b"Q", b"COMMIT\0"))


class TestPause:
    async def test_paused_query_waits_until_resume(self, pg_server: PgServer) -> None:
        """A query sent while paused gets no answer; after resume() a new connection works."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            url = proxy.url_for(pg_server.dsn)
            conn = await connect(url)
            try:
                proxy.pause()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 0.2)
                assert proxy.active >= 1
            finally:
                conn.terminate()
            proxy.resume()
            conn = await connect(url)
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()


class TestStop:
    async def test_stop_leaves_no_tasks(self, pg_server: PgServer) -> None:
        """stop() with open, busy and held connections ends every task the proxy started."""
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            url = proxy.url_for(pg_server.dsn)
            conns = [await connect(url) for _ in range(3)]
            try:
                proxy.slow(30)
                proxy.pause()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conns[0].fetchval("SELECT 1"), 0.1)
                tasks = proxy.tasks
                assert len(tasks) >= 6
                await proxy.stop()
                assert all(task.done() for task in tasks)
                assert not proxy.tasks
                assert not tasks & asyncio.all_tasks()
                assert proxy.active == 0
                with pytest.raises(CONNECTION_ERRORS) as info:
                    await conns[1].fetchval("SELECT 1")
                assert_connection_error(info.value)
            finally:
                for conn in conns:
                    conn.terminate()
