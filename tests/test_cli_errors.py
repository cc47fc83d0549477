"""Every failure of the ``atrace`` command is one line on stderr and the documented exit code.

README ("In the terminal"): 0 done, 1 no such trace, 2 bad arguments, 3 database or collector
unreachable. The command runs as a subprocess (``python -m atrace.cli``), against a database
nothing listens for, a collector nothing listens for, a real collector that refuses the key,
and arguments no source could answer.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

import pytest

from _collector import (
    CollectorServer,
    collector_server,  # noqa: F401
)

NO_DB = "postgresql://u@127.0.0.1:1/x"
NO_COLLECTOR = "http://127.0.0.1:1"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
USAGE, UNREACHABLE = 2, 3

# Each view with the arguments it needs to run at all.
VIEWS = {
    "traces": ("traces",),
    "show": ("show", TRACE_ID),
    "tail": ("tail",),
    "tail -f": ("tail", "-f"),
    "errors": ("errors",),
}


@dataclass(frozen=True)
class Done:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


async def atrace(*args: str, env: dict[str, str] | None = None) -> Done:
    """``python -m atrace.cli ARGS`` in a subprocess, without blocking the loop (a collector
    under test may be serving on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atrace.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Done(args, proc.returncode, out.decode(), err.decode())


async def run_all(cases: list[tuple[str, ...]], env: dict[str, str] | None = None) -> list[Done]:
    gate = asyncio.Semaphore(8)

    async def one(args: tuple[str, ...]) -> Done:
        async with gate:
            return await atrace(*args, env=env)

    return await asyncio.gather(*(one(a) for a in cases))


def assert_one_line(done: Done, code: int, starts: str = "atrace: ") -> None:
    """Exactly one line on stderr, beginning ``starts``, no traceback, exit ``code``."""
    where = f"atrace {' '.join(done.args)}: exit {done.returncode}, stderr {done.stderr!r}"
    assert "Traceback" not in done.stderr, where
    assert done.returncode == code, where
    lines = done.stderr.splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith(starts), where


class TestUnreachableDatabase:
    async def test_every_database_command_exits_3(self) -> None:
        """Views, keys, db init and serve with a database nothing listens for: one line, 3."""
        cases = [(*view, "--dsn", NO_DB) for view in VIEWS.values()]
        cases += [
            ("keys", "list", "--dsn", NO_DB),
            ("keys", "create", "--project", "p", "--dsn", NO_DB),
            ("keys", "revoke", "abc", "--dsn", NO_DB),
            ("db", "init", "--dsn", NO_DB),
            ("serve", "--dsn", NO_DB, "--port", "0"),
        ]
        for done in await run_all(cases):
            assert_one_line(done, UNREACHABLE, "atrace: cannot reach the database")

    async def test_password_is_never_printed(self) -> None:
        """The line naming an unreachable database never shows the DSN's password."""
        dsn = "postgresql://u:s3cr3t@127.0.0.1:1/x"
        for done in await run_all([("traces", "--dsn", dsn), ("keys", "list", "--dsn", dsn)]):
            assert_one_line(done, UNREACHABLE)
            assert "s3cr3t" not in done.stderr

    async def test_database_commands_that_need_none_still_answer(self, tmp_path: object) -> None:
        """`db status` (embedded server not running: 3) and `spill status` (offline: 0) need
        no database and print no traceback."""
        env = {"ATRACE_DATA_DIR": str(tmp_path)}
        status, spill = await run_all(
            [("db", "status"), ("spill", "status", "--dsn", NO_DB)], env=env
        )
        assert status.returncode == UNREACHABLE and "Traceback" not in status.stderr, status
        assert "not running" in status.stdout
        assert spill.returncode == 0 and spill.stderr == "", spill


class TestUnreachableCollector:
    async def test_every_view_exits_3(self) -> None:
        """Each view with a collector nothing listens for: one line naming it, exit 3."""
        cases = [(*view, "--url", NO_COLLECTOR) for view in VIEWS.values()]
        for done in await run_all(cases):
            assert_one_line(done, UNREACHABLE, "atrace: cannot reach the collector")
            # The collector's address once, with the reason: no request URL repeated after it.
            assert done.stderr.count(NO_COLLECTOR.split("//")[1]) == 1, done.stderr


class TestRefusedKey:
    async def test_every_view_exits_3(
        self,
        collector_server: CollectorServer,  # noqa: F811
    ) -> None:
        """A real collector refusing ATRACE_API_KEY: each view says so in one line, exit 3."""
        await collector_server.create_key("alpha")
        cases = [(*view, "--url", collector_server.url) for view in VIEWS.values()]
        env = {"ATRACE_API_KEY": "atk_wrong_key"}
        for done in await run_all(cases, env=env):
            assert_one_line(done, UNREACHABLE)
            assert "refused the API key" in done.stderr, done

    async def test_a_good_key_still_works(
        self,
        collector_server: CollectorServer,  # noqa: F811
    ) -> None:
        """With the right key the same views answer 0, and `show` of an unknown trace 1."""
        key = await collector_server.create_key("alpha")
        env = {"ATRACE_API_KEY": key}
        url = collector_server.url
        traces, errors, show = await run_all(
            [("traces", "--url", url), ("errors", "--url", url), ("show", TRACE_ID, "--url", url)],
            env=env,
        )
        assert traces.returncode == 0 and errors.returncode == 0, (traces, errors)
        assert_one_line(show, 1, f"atrace: no trace {TRACE_ID}")


class TestBadArguments:
    @pytest.mark.parametrize("source", [("--dsn", NO_DB), ("--url", NO_COLLECTOR)])
    async def test_refused_before_any_source_is_opened(self, source: tuple[str, str]) -> None:
        """A malformed time, id, limit, level or slow bound is exit 2, whether or not the
        source could be reached."""
        cases = [
            ("traces", "--since", "banana", *source),
            ("tail", "--since", "banana", *source),
            ("errors", "--since", "banana", *source),
            ("traces", "--since", "999999999w", *source),
            ("show", "not-a-trace-id", *source),
            ("show", "0" * 32, *source),
            ("traces", "--limit", "0", *source),
            ("traces", "--limit", "-5", *source),
            ("errors", "--limit", "100000", *source),
            ("tail", "-n", "0", *source),
            ("tail", "--level", "bogus", *source),
            ("tail", "--service", "x" * 5000, *source),
            ("traces", "--slow", "inf", *source),
            ("traces", "--slow", "-1", *source),
        ]
        for done in await run_all(cases):
            assert_one_line(done, USAGE)

    async def test_malformed_sources(self) -> None:
        """A DSN or URL that is not one is a bad argument: one line, exit 2."""
        cases = [
            ("traces", "--dsn", "notadsn"),
            ("db", "init", "--dsn", "notadsn"),
            ("keys", "list", "--dsn", "http://x"),
            ("traces", "--url", "notaurl"),
            ("errors", "--url", "ftp://x"),
            ("show", TRACE_ID, "--url", "http://x:99999"),
        ]
        for done in await run_all(cases):
            assert_one_line(done, USAGE)

    async def test_argparse_usage_errors_are_exit_2(self) -> None:
        """Options argparse itself refuses end with its usage and exit 2, no traceback."""
        for done in await run_all([("traces", "--limit", "many"), ("show",), ("nonsense",)]):
            assert done.returncode == USAGE and "Traceback" not in done.stderr, done
