"""The installed ``atrace`` command, run as a user would, against the test PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from _helpers import EVERY_EXTRA
from atrace._postgres.schema import SCHEMA_VERSION

ATRACE = str(Path(sys.executable).with_name("atrace"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ATRACE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


class TestDbInit:
    async def test_creates_schema(self, pg_schema: tuple[str, str]) -> None:
        """`atrace db init` creates the schema and says which version it is at; twice is fine."""
        dsn, schema = pg_schema
        for _ in range(2):
            done = run("db", "init", "--dsn", dsn, "--schema", schema)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == f"schema {schema} is at version {SCHEMA_VERSION}"
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.records") is not None
        finally:
            await conn.close()

    def test_bad_schema_name(self) -> None:
        """An invalid schema name is a one-line error with exit code 2."""
        done = run("db", "init", "--dsn", "postgresql://x@127.0.0.1:1/x", "--schema", "bad name")
        assert done.returncode == 2
        assert (
            done.stderr.startswith("atrace: schema='bad name'") and "Traceback" not in done.stderr
        )

    def test_unreachable_database(self) -> None:
        """An unreachable database is a one-line error with exit code 3, not a traceback."""
        done = run("db", "init", "--dsn", "postgresql://x@127.0.0.1:1/x")
        assert done.returncode == 3
        assert (
            done.stderr.startswith("atrace: cannot reach the database")
            and "Traceback" not in done.stderr
        )


class TestDemo:
    async def test_demo_writes_and_reads_back(self, pg_schema: tuple[str, str]) -> None:
        """The demo runs its workload and prints the trees and a summary read back from the DB."""
        dsn, schema = pg_schema
        done = run("demo", "--dsn", dsn, "--schema", schema, env={"COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        out = done.stdout
        summary = re.search(r"(\d+) traces, (\d+) spans, (\d+) logs, (\d+) errors read back", out)
        assert summary is not None, out
        assert summary.groups() == ("5", "20", "16", "3")
        assert "POST /checkout" in out and "charge card" in out
        assert "PaymentDeclined: card declined for order 4" in out
        conn = await asyncpg.connect(dsn)
        try:
            count = await conn.fetchval(f"SELECT count(*) FROM {schema}.records")
            failed = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.records WHERE status = 2 AND kind IN (2, 3)"
            )
        finally:
            await conn.close()
        assert (count, failed) == (36, 2)


class TestVersion:
    def test_names_the_version_and_what_runs_compiled(self) -> None:
        """`atrace --version` prints the version, then which modules run compiled or as twins."""
        import atrace
        from atrace._speedups import implementations

        done = run("--version")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == f"atrace {atrace.__version__}"
        running = implementations()
        compiled = "compiled: ring, emit, row encoder, binary COPY, OTLP decoder"
        if set(running.values()) == {"cython"}:
            assert lines[1:] == [compiled]
        else:
            assert any(line.startswith("pure Python: ") for line in lines[1:])

    def test_says_when_the_twins_are_forced(self) -> None:
        """With ATRACE_PUREPYTHON=1 every module is listed as pure Python, none as compiled."""
        done = run("--version", env={"ATRACE_PUREPYTHON": "1"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1:] == [
            "pure Python: ring, emit, row encoder, binary COPY, OTLP decoder"
        ]

    def test_runs_as_a_module(self) -> None:
        """`python -m atrace.cli` is the same command as the `atrace` script."""
        done = subprocess.run(
            [sys.executable, "-m", "atrace.cli", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == run("--version").stdout.splitlines()


# The command in a fresh interpreter where the modules named are missing: ``None`` in
# sys.modules makes both ``import`` and ``importlib.util.find_spec`` find nothing, as for a
# package never installed.
_WITHOUT = (
    "import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
    "from atrace.cli import main\n"
    "sys.exit(main())"
)
_UNREACHABLE = "postgresql://x@127.0.0.1:1/x"


def run_without(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """``atrace ARGS`` as if ``blocked`` were not installed."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT.format(blocked=blocked), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


class TestMissingExtras:
    @pytest.mark.parametrize(
        "module", ["asyncpg", "aiohttp", "msgpack", "opentelemetry.proto", "google.protobuf"]
    )
    def test_serve_names_the_collector_extra(self, module: str) -> None:
        """`atrace serve` without any module of the collector extra prints one line naming the
        extra, and exits with 2, before it starts."""
        done = run_without((module,), "serve", "--dsn", _UNREACHABLE, "--port", "0")
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == (
            "atrace serve needs the collector extra: pip install 'atrace[collector]'\n"
        )

    @pytest.mark.parametrize(
        ("args", "line"),
        [
            (("db", "init"), "atrace db needs the pg extra: pip install 'atrace[pg]'"),
            (("keys", "list"), "atrace keys needs the pg extra: pip install 'atrace[pg]'"),
            (("traces",), "atrace traces needs the pg extra: pip install 'atrace[pg]'"),
            (("tail",), "atrace tail needs the pg extra: pip install 'atrace[pg]'"),
        ],
    )
    def test_database_commands_name_the_pg_extra(self, args: tuple[str, ...], line: str) -> None:
        """A command that reads PostgreSQL, without asyncpg, prints one line naming the extra."""
        done = run_without(("asyncpg",), *args, "--dsn", _UNREACHABLE)
        assert (done.returncode, done.stderr) == (2, line + "\n")

    def test_views_of_a_collector_name_the_http_extra(self) -> None:
        """A view of a collector's API, without aiohttp, prints one line naming the extra."""
        done = run_without(("aiohttp",), "errors", "--url", "http://127.0.0.1:1")
        assert (done.returncode, done.stderr) == (
            2,
            "atrace errors needs the http extra: pip install 'atrace[http]'\n",
        )

    async def test_views_name_the_cli_extra(self, pg_schema: tuple[str, str]) -> None:
        """A view printed for the terminal, without rich, prints one line naming the extra;
        --json needs no rich."""
        dsn, schema = pg_schema
        assert run("db", "init", "--dsn", dsn, "--schema", schema).returncode == 0
        done = run_without(("rich",), "traces", "--dsn", dsn, "--schema", schema)
        assert (done.returncode, done.stderr) == (
            2,
            "atrace traces needs the cli extra: pip install 'atrace[cli]'\n",
        )
        done = run_without(("rich",), "traces", "--json", "--dsn", dsn, "--schema", schema)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["spans"] == []

    def test_help_needs_no_extra(self) -> None:
        """`atrace --help` works with every optional dependency missing."""
        everything = EVERY_EXTRA
        done = run_without(everything, "--help")
        assert done.returncode == 0, done.stderr
        assert "serve" in done.stdout
