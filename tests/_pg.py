"""The test session's PostgreSQL: ``ATRACE_TEST_DSN`` if set, else a throwaway local server.

Fixtures (import them into ``conftest.py``)::

    pg_server   session scope, sync: the running :class:`PgServer` (``.dsn``, ``.host``, ``.port``)
    pg_schema   function scope, async: ``(dsn, schema)``, a fresh empty schema dropped (CASCADE)
                after the test, so no test ever sees another test's rows

Outside fixtures, :func:`create_schema` and :func:`drop_schema` do the same by hand.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import platformdirs
import pytest
import pytest_asyncio

__all__ = ("PgServer", "create_schema", "drop_schema", "pg_schema", "pg_server", "session_server")

DSN_ENV = "ATRACE_TEST_DSN"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Dropping a schema waits for every lock on its tables; a test that leaked a connection inside a
# transaction should fail its teardown, not hang the session.
DROP_LOCK_TIMEOUT = "10s"

# PostgreSQL refuses to run as root; as root we borrow the account pgserver creates for the same
# reason, so a machine that ran the embedded database once has one such account, not two.
_SYSTEM_USER = "pgserver"

_SETTINGS = {
    # Durability buys nothing for a cluster deleted at exit and costs most of a write's time.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Each test may open pools of its own, and concurrency tests open many; 100 runs out.
    "max_connections": "200",
}


class PgServer:
    """One PostgreSQL for the test session, reached over TCP at ``.host``:``.port``."""

    def __init__(self) -> None:
        self.dsn = ""
        self.host = ""
        self.port = 0
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}

    @property
    def data_dir(self) -> Path | None:
        """The cluster's data directory, or None when the server is not ours to run."""
        return None if self._base is None else self._base / "data"

    def start(self) -> None:
        """Use ``ATRACE_TEST_DSN`` if set, else start a server and wait until it takes queries."""
        external = os.environ.get(DSN_ENV, "")
        if external:
            self._use_external(external)
            return
        bin_dir = _bin_dir()
        self._base = Path(tempfile.mkdtemp(prefix="atrace-pg-", dir="/tmp"))
        atexit.register(self.stop)
        try:
            self._start(bin_dir)
        except BaseException:
            self.stop()
            raise

    def _start(self, bin_dir: Path) -> None:
        assert self._base is not None
        # mkdtemp makes 0700; the server's own account must be able to enter it when run as root.
        self._base.chmod(0o755)
        self._as_user = _drop_root(self._base, bin_dir)
        self._run(
            bin_dir / "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=utf8",
            # The host's locale may not exist for these binaries, and tests must not sort by it.
            "--no-locale",
            "--no-sync",
            cwd=self._base,
        )
        for _ in range(3):
            # The port is free when probed but may be taken before the server binds it; retry then.
            if self._launch(bin_dir, _free_port()):
                return
        raise RuntimeError(f"PostgreSQL found no free port\n{self._log()}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory; a no-op when not ours."""
        atexit.unregister(self.stop)
        base, proc, self._base, self._proc = self._base, self._proc, None, None
        if base is None:
            return
        try:
            if proc is not None and proc.poll() is None:
                bin_dir = _bin_dir()
                try:
                    self._run(
                        *(bin_dir / "pg_ctl", "stop", "-D", base / "data", "-m", "fast", "-w"),
                        cwd=base,
                    )
                    proc.wait(STOP_TIMEOUT)
                except (subprocess.SubprocessError, OSError):
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) and start it again, same port and data.

        Blocking: from a coroutine, call it through ``asyncio.to_thread``.
        """
        if self._base is None or self._proc is None:
            raise RuntimeError("only a server this session started can be restarted")
        bin_dir = _bin_dir()
        self._run(
            *(bin_dir / "pg_ctl", "stop", "-D", self._base / "data", "-m", "fast", "-w"),
            cwd=self._base,
        )
        self._proc.wait(STOP_TIMEOUT)
        if not self._launch(bin_dir, self.port):
            raise RuntimeError(f"PostgreSQL could not bind port {self.port} again\n{self._log()}")

    def _use_external(self, dsn: str) -> None:
        self.dsn = dsn
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        self.host = parts.hostname or query.get("host", ["localhost"])[0]
        self.port = parts.port or int(query.get("port", ["5432"])[0])

    def _launch(self, bin_dir: Path, port: int) -> bool:
        assert self._base is not None and self.data_dir is not None
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(port)]
        args += ["-h", "127.0.0.1", "-k", str(self.data_dir)]
        for name, value in _SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        with (self._base / "log").open("ab") as log:
            log_start = log.tell()
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._base,
                # Its own session: Ctrl-C reaches pytest, which then stops the server in order,
                # instead of the server dying under tests that are still tearing down.
                start_new_session=True,
                **self._as_user,
            )
        self.host, self.port = "127.0.0.1", port
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self._wait_ready(log_start)

    def _wait_ready(self, log_start: int) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last: BaseException | None = None
        # A private loop: this runs inside pytest's session setup, where the current event loop
        # belongs to pytest-asyncio and must not be replaced or closed.
        loop = asyncio.new_event_loop()
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    if "could not bind" in self._log(log_start):
                        self._proc = None
                        return False
                    code = self._proc.returncode
                    raise RuntimeError(f"PostgreSQL exited with {code} at start\n{self._log()}")
                try:
                    loop.run_until_complete(_select_one(self.dsn))
                    return True
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
                    last = exc
                time.sleep(0.05)
        finally:
            loop.close()
        self._proc.kill()
        self._proc.wait(STOP_TIMEOUT)
        raise RuntimeError(
            f"PostgreSQL did not accept connections at {self.dsn} within {START_TIMEOUT:.0f} s "
            f"(last error: {last!r})\n{self._log()}"
        )

    def _run(self, *args: str | Path, cwd: Path) -> None:
        # An explicit cwd: the server's account may not be allowed into the test's working dir.
        done = subprocess.run(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            check=False,
            **self._as_user,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}):\n{output}")

    def _log(self, start: int = 0) -> str:
        log = None if self._base is None else self._base / "log"
        if log is None or not log.exists():
            return "(no server log)"
        with log.open("rb") as f:
            f.seek(start)
            return "server log:\n" + f.read().decode(errors="replace")


async def _select_one(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.fetchval("select 1")
    finally:
        await conn.close()


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # Importing pgserver looks up a runtime dir, and platformdirs warns when XDG_RUNTIME_DIR
        # is unset; the fallback is fine and the warning would fail a session run with -W error.
        category = getattr(platformdirs, "RuntimeDirWarning", None)
        if category is not None:
            warnings.simplefilter("ignore", category)
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _drop_root(base: Path, bin_dir: Path) -> dict[str, Any]:
    """Make ``base`` and the binaries usable by the server's account; return subprocess kwargs."""
    if sys.platform == "win32" or os.geteuid() != 0:
        return {}
    import pwd

    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_SYSTEM_USER)
    account = pwd.getpwnam(_SYSTEM_USER)
    # The same widening pgserver applies before its own start: the binaries sit inside a venv that
    # may be under a directory only root can enter.
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    os.chown(base, account.pw_uid, account.pw_gid)
    # Only the user would leave root's group and supplementary groups on the server process.
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_schema(dsn: str) -> str:
    """Create a fresh schema with a unique name like ``t_1a2b3c4d5e6f`` and return the name."""
    name = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {_quote_ident(name)}")
    finally:
        await conn.close()
    return name


async def drop_schema(dsn: str, name: str) -> None:
    """Drop schema ``name`` and everything in it; a schema already gone is fine."""
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": DROP_LOCK_TIMEOUT})
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {_quote_ident(name)} CASCADE")
    finally:
        await conn.close()


_session: PgServer | None = None


def session_server() -> PgServer:
    """Return the session's server, starting it on first use.

    A module-level singleton rather than fixture state: a test module that imports the fixture
    directly defines a second fixture of the same name, and that must not start a second server.
    """
    global _session
    if _session is None:
        server = PgServer()
        server.start()
        _session = server
    return _session


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    global _session
    server = session_server()
    yield server
    if _session is server:
        _session = None
        server.stop()


@pytest_asyncio.fixture
async def pg_schema(pg_server: PgServer) -> AsyncIterator[tuple[str, str]]:
    """A ``(dsn, schema)`` pair: a new empty schema for this test alone, dropped afterwards."""
    name = await create_schema(pg_server.dsn)
    try:
        yield pg_server.dsn, name
    finally:
        await drop_schema(pg_server.dsn, name)


@pytest_asyncio.fixture
async def pg_db(pg_schema: tuple[str, str]) -> AsyncIterator[tuple[Any, str]]:
    """``(connection, schema)``: a connection with atrace's codecs to a migrated schema."""
    from atrace._postgres.schema import ensure_schema
    from atrace._postgres.session import connection_init

    dsn, schema = pg_schema
    conn = await asyncpg.connect(dsn)
    try:
        await connection_init(conn)
        await ensure_schema(conn, schema)
        yield conn, schema
    finally:
        await conn.close()
