"""Whole programs in a subprocess: records emitted before exit reach PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import asyncpg

PROGRAMS = {
    "asyncio_run_then_exit": """
        import asyncio, atrace
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        async def main():
            async with atrace.span("request"):
                atrace.info("inside")
        asyncio.run(main())
        atrace.info("after the loop closed")
    """,
    "sync_program_no_loop": """
        import atrace
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        with atrace.span("request"):
            atrace.info("inside")
        atrace.info("after the loop closed")
    """,
    "sync_program_explicit_flush": """
        import atrace
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        with atrace.span("request"):
            atrace.info("inside")
        atrace.info("after the loop closed")
        assert atrace.flush(timeout=30)
        import os
        os._exit(0)  # no exit handlers: only the explicit flush can have written the rows
    """,
    "reconfigured_before_exit": """
        import atrace
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        with atrace.span("request"):
            atrace.info("inside")
        # The first pipeline still holds those records: replaced, it writes them and stops.
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        atrace.info("after the loop closed")
    """,
    "shutdown_then_more": """
        import asyncio, atrace
        atrace.configure(service="exit-test", sink=DSN, schema=SCHEMA, flush_interval=3600)
        async def main():
            async with atrace.span("request"):
                atrace.info("inside")
            assert await atrace.ashutdown(timeout=30)
        asyncio.run(main())
        atrace.info("after the loop closed")  # starts the stopped pipeline again
    """,
    "unconfigured_from_environment": """
        import asyncio, atrace
        async def main():
            async with atrace.span("request"):
                atrace.info("inside")
            atrace.info("after the loop closed")
        asyncio.run(main())
    """,
}


def run_program(name: str, dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(PROGRAMS[name]).replace("DSN", repr(dsn)).replace("SCHEMA", repr(schema))
    env = {**os.environ, "ATRACE_SINK": dsn, "ATRACE_SCHEMA": schema}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


async def rows(dsn: str, schema: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                f"SELECT kind, name, message, service FROM {schema}.records ORDER BY ts"
            )
        )
    finally:
        await conn.close()


class TestExit:
    async def test_each_program_writes_everything(self, pg_schema: tuple[str, str]) -> None:
        """After asyncio.run, in a sync program, with flush(), reconfigured, restarted after a
        shutdown, unconfigured: every record lands."""
        dsn, base = pg_schema
        for index, name in enumerate(PROGRAMS):
            schema = f"{base}_{index}"
            done = run_program(name, dsn, schema)
            assert done.returncode == 0, f"{name}: {done.stderr}"
            got = await rows(dsn, schema)
            assert sorted((r["kind"], r["message"] or r["name"]) for r in got) == [
                (0, "after the loop closed"),
                (0, "inside"),
                (3, "request"),
            ], name
            assert {r["service"] for r in got} == {"exit-test"} or name.startswith("unconfigured")
            conn = await asyncpg.connect(dsn)
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()
