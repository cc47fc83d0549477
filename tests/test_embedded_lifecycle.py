"""The embedded PostgreSQL's lifecycle: it stops with its last user, `atrace db` pins and stops it.

Real processes against a real server in one data dir under /tmp (shared by the module: starting a
server costs a second or two). As root, PostgreSQL runs as pgserver's own account, which must
traverse every parent of the data dir; pytest's tmp_path is not traversable, /tmp is.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from _helpers import wait_until
from atrace._postgres import embedded as _embedded

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and modes")

ATRACE = [sys.executable, "-m", "atrace.cli"]

# A user of the embedded server: attaches, says its DSN, and exits when its stdin closes.
USER = """
import sys
from atrace._postgres.embedded import embedded_dsn
print(embedded_dsn(), flush=True)
sys.stdin.readline()
"""

# A short script as a user writes one: no sink configured, one log line, the exit flush.
SCRIPT = """
import sys
import atrace
atrace.configure(service="lifecycle", shutdown_timeout=60)  # a first start runs initdb
atrace.info(sys.argv[1])
"""


@pytest.fixture(scope="module")
def data() -> Iterator[pathlib.Path]:
    """A data dir atrace creates itself, in a fresh directory under /tmp."""
    parent = pathlib.Path(tempfile.mkdtemp(prefix="atrace-lifecycle-", dir="/tmp"))
    try:
        yield parent / "data"
    finally:
        _embedded.stop_embedded(parent / "data")
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def env(data: pathlib.Path) -> Iterator[dict[str, str]]:
    """The environment of the processes a test starts; the server is stopped after each test."""
    yield {**os.environ, "ATRACE_DATA_DIR": str(data)}
    _embedded.release_embedded(data)
    _embedded.stop_embedded(data)


class Users:
    """Long-running user processes, ended (and collected) when the test ends."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", USER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("postgresql://")  # attached
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def users(env: dict[str, str]) -> Iterator[Users]:
    started = Users(env)
    try:
        yield started
    finally:
        started.close()


def postmaster(data: pathlib.Path) -> int | None:
    """The PID of the server running on the data dir, or None."""
    try:
        pid = int((data / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def registered(data: pathlib.Path) -> list[int]:
    """The PIDs in pgserver's registry of the server's users."""
    try:
        return list(json.loads((data / "pg" / ".handle_pids.json").read_text()))
    except FileNotFoundError:
        return []


def atrace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ATRACE, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def run_script(env: dict[str, str], message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, message],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def spilled(env: dict[str, str]) -> list[pathlib.Path]:
    return list(pathlib.Path(env["ATRACE_SPILL_DIR"]).rglob("*"))


async def test_script_exit_stops_server(data: pathlib.Path, env: dict[str, str]) -> None:
    """A script that logged to the embedded database exits: its line is stored, the server stops."""
    message = f"hello {uuid.uuid4()}"
    done = run_script(env, message)
    assert done.returncode == 0, done.stderr
    await wait_until(lambda: postmaster(data) is None, describe=lambda: registered(data))
    # The exit flush wrote before the server stopped.
    dsn = _embedded.embedded_dsn(data)
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM atrace.records WHERE message = $1", message
        )
    finally:
        await conn.close()
    assert stored == 1, (done.stderr, spilled(env))


async def test_sigkilled_user_is_pruned(data: pathlib.Path, users: Users) -> None:
    """With one user SIGKILLed, the server stops when the other one exits."""
    killed = users.start()
    remaining = users.start()
    server = postmaster(data)
    assert server is not None
    assert {killed.pid, remaining.pid} <= set(registered(data))
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert postmaster(data) == server
    users.finish(remaining)
    await wait_until(lambda: postmaster(data) is None, describe=lambda: registered(data))
    assert registered(data) == []


def test_status_stops_an_orphaned_server(data: pathlib.Path, users: Users) -> None:
    """`atrace db status` after the only user was SIGKILLed forgets it and stops the server."""
    killed = users.start()
    assert postmaster(data) is not None
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    done = atrace(users.env, "db", "status")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "not running (stopped now: no live process used it)" in done.stdout
    assert postmaster(data) is None
    assert registered(data) == []


async def test_pinned_server_survives_a_script(data: pathlib.Path, env: dict[str, str]) -> None:
    """After `atrace db start`, a script's exit leaves the server running."""
    started = atrace(env, "db", "start")
    assert started.returncode == 0, started.stderr
    server = postmaster(data)
    assert server is not None
    assert f"(pid {server})" in started.stdout
    assert registered(data) == []  # the CLI let go of it as it exited
    done = run_script(env, "pinned")
    assert done.returncode == 0, done.stderr
    # The script's exit was handled (its PID pruned) and the server is the one pinned.
    await wait_until(lambda: registered(data) == [])
    assert postmaster(data) == server
    again = atrace(env, "db", "start")
    assert f"already running (pid {server})" in again.stdout


def test_status_reports_the_server(data: pathlib.Path, users: Users) -> None:
    """`atrace db status` shows the PID, port, socket dir, DSN, data dir, size and users."""
    assert atrace(users.env, "db", "start").returncode == 0
    user = users.start()
    done = atrace(users.env, "db", "status")
    assert done.returncode == 0, done.stderr
    server = postmaster(data)
    lines = done.stdout.splitlines()
    # A value too wide for its line (the DSN of a long path) goes whole on the next one.
    joined = re.sub(r"\n {4}(?=\S)", " ", done.stdout)
    fields = {line.split(None, 1)[0]: line for line in joined.splitlines()[1:]}
    assert lines[0] == "embedded PostgreSQL: running, kept by `atrace db start`"
    assert fields["pid"].split()[-1] == str(server)
    assert fields["port"].split()[-1].isdigit()
    assert fields["socket"].split()[-1] == str((data / "pg").resolve())
    assert fields["dsn"].split()[-1].startswith("postgresql://postgres@/postgres?host=")
    assert fields["data"].split()[-1] == str(data)
    assert fields["on"].endswith("MiB")
    assert fields["used"].endswith("1 live process")
    assert lines[-1].split()[0] == str(user.pid)
    assert "password" not in done.stdout
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines)


def test_stop_stops_a_server_in_use(data: pathlib.Path, users: Users) -> None:
    """`atrace db stop` stops a pinned server in use and says how many processes used it."""
    assert atrace(users.env, "db", "start").returncode == 0
    users.start()
    server = postmaster(data)
    done = atrace(users.env, "db", "stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"stopped the embedded PostgreSQL (pid {server}); 1 live process used it"
    )
    assert postmaster(data) is None
    assert not (data / "pg.pinned").exists()
    status = atrace(users.env, "db", "status")
    assert status.returncode == 3
    assert status.stdout.startswith("embedded PostgreSQL: not running\n")


def test_data_dir_is_private(data: pathlib.Path, users: Users) -> None:
    """The data dir is its user's alone: 0700, or as root 0710 with only the server let through."""
    users.start()
    mode = stat.S_IMODE(data.stat().st_mode)
    assert stat.S_IMODE((data / "pg.lock").stat().st_mode) == 0o600
    if os.geteuid() != 0:
        assert mode == 0o700
        return
    server = postmaster(data)
    assert server is not None
    # Group traverse only, for the server's group; no read, and nothing at all for others.
    assert mode == 0o710
    server_gid = int(
        next(
            line.split()[2]
            for line in pathlib.Path(f"/proc/{server}/status").read_text().splitlines()
            if line.startswith("Gid:")
        )
    )
    assert data.stat().st_gid == server_gid
    assert stat.S_IMODE(data.parent.stat().st_mode) & 0o007 == 0
    for path in (data, data / "pg", data.parent):
        listing = subprocess.run(
            ["ls", str(path)], user="nobody", cwd="/", capture_output=True, text=True, check=False
        )
        assert listing.returncode != 0, f"nobody can list {path}: {listing.stdout}"
