"""The test session's PostgreSQL fixtures: one server, one private schema per test."""

from __future__ import annotations

import os
import socket

import asyncpg
import pytest

import _pg
from _pg import PgServer, create_schema, drop_schema, session_server

# Until conftest.py imports them, this module takes the fixtures from _pg itself.
pg_server = _pg.pg_server
pg_schema = _pg.pg_schema

_seen_schemas: list[str] = []


class TestPgServer:
    def test_accepts_tcp_at_host_and_port(self, pg_server: PgServer) -> None:
        """The server accepts a TCP connection at the advertised host and port."""
        if pg_server.host.startswith("/"):
            pytest.skip("ATRACE_TEST_DSN names a unix socket")
        with socket.create_connection((pg_server.host, pg_server.port), timeout=5):
            pass

    async def test_dsn_runs_queries(self, pg_server: PgServer) -> None:
        """A client using the server's DSN can run a query."""
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    @pytest.mark.skipif(bool(os.environ.get("ATRACE_TEST_DSN")), reason="external server")
    async def test_local_server_listens_on_loopback(self, pg_server: PgServer) -> None:
        """The session's own server listens on 127.0.0.1 at the port it reports."""
        assert pg_server.host == "127.0.0.1"
        assert pg_server.dsn == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
        conn = await asyncpg.connect(host=pg_server.host, port=pg_server.port, user="postgres")
        try:
            assert await conn.fetchval("select inet_server_port()") == pg_server.port
            assert await conn.fetchval("show fsync") == "off"
        finally:
            await conn.close()

    def test_started_once_per_session(self, pg_server: PgServer) -> None:
        """Every request for the session's server gets the same running server."""
        assert session_server() is pg_server


class TestPgSchema:
    @pytest.mark.parametrize("run", [1, 2])
    async def test_each_test_gets_a_fresh_schema(
        self, pg_schema: tuple[str, str], run: int
    ) -> None:
        """Each test gets a new, empty schema, and the previous test's schema is gone."""
        dsn, schema = pg_schema
        assert schema not in _seen_schemas
        conn = await asyncpg.connect(dsn)
        try:
            existing = await conn.fetch(
                "select nspname from pg_namespace where nspname = any($1::text[])",
                [*_seen_schemas, schema],
            )
            assert [r["nspname"] for r in existing] == [schema]
            tables = await conn.fetchval(
                "select count(*) from pg_tables where schemaname = $1", schema
            )
            assert tables == 0
            await conn.execute(f'create table "{schema}".rows (n int)')
            await conn.execute(f'insert into "{schema}".rows values ($1)', run)
            assert await conn.fetchval(f'select array_agg(n) from "{schema}".rows') == [run]
        finally:
            await conn.close()
        _seen_schemas.append(schema)

    async def test_schemas_are_isolated(self, pg_server: PgServer) -> None:
        """Tables of the same name in two schemas hold separate rows."""
        first = await create_schema(pg_server.dsn)
        second = await create_schema(pg_server.dsn)
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            assert first != second
            for schema, value in ((first, 1), (second, 2)):
                await conn.execute(f'create table "{schema}".rows (n int)')
                await conn.execute(f'insert into "{schema}".rows values ($1)', value)
            assert await conn.fetchval(f'select array_agg(n) from "{first}".rows') == [1]
            assert await conn.fetchval(f'select array_agg(n) from "{second}".rows') == [2]
        finally:
            await conn.close()
            await drop_schema(pg_server.dsn, first)
            await drop_schema(pg_server.dsn, second)

    async def test_drop_schema_tolerates_a_missing_schema(self, pg_server: PgServer) -> None:
        """Dropping a schema that no longer exists is not an error."""
        name = await create_schema(pg_server.dsn)
        await drop_schema(pg_server.dsn, name)
        await drop_schema(pg_server.dsn, name)
