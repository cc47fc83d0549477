"""The embedded default database: a private PostgreSQL in atrace's data dir, run by pgserver."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import platformdirs

from ..config import env
from ..errors import ConfigError, MissingExtraError

__all__ = ("data_dir", "embedded_dsn", "release_embedded")

ROOT_DATA_DIR = pathlib.Path("/var/lib/atrace")

# pgserver hands the socket dir (the data dir) to pg_ctl's -o, which goes through /bin/sh
# unquoted: a path with any of these characters splits or expands and PostgreSQL does not start.
_SHELL_UNSAFE = re.compile(r"[\s\"'\\$`;&|<>()*?\[\]]")

# pgserver stops a server at exit once no process holds a handle to it; holding ours here ties the
# server's life to this process, whatever pgserver does with its own registry.
_servers: dict[pathlib.Path, Any] = {}
_lock = threading.Lock()


def data_dir() -> pathlib.Path:
    """Return the directory atrace keeps its own data in (the embedded database lives below it)."""
    configured = env("ATRACE_DATA_DIR")
    if configured is not None:
        return pathlib.Path(configured).expanduser()
    if sys.platform != "win32" and os.geteuid() == 0:
        # As root, pgserver runs PostgreSQL as its own system user and widens the permissions of
        # every parent of the data dir until that user can reach it; under /root that would open
        # root's home to every account on the machine.
        return ROOT_DATA_DIR
    default = platformdirs.user_data_path("atrace")
    if sys.platform != "win32" and _SHELL_UNSAFE.search(str(default)):
        # macOS puts it under "Application Support", where pgserver cannot start a server.
        return pathlib.Path.home() / ".atrace"
    return default


def embedded_dsn(data: pathlib.Path | None = None) -> str:
    """Start (or reuse) the embedded server on ``<data>/pg`` and return a DSN for it.

    ``data`` defaults to :func:`data_dir`. The server stays up for the life of this process; a
    server another process already runs on the same directory is shared, not started twice.
    The first call blocks while PostgreSQL starts (about a second, longer on a fresh directory);
    from async code, call it through ``asyncio.to_thread``.
    """
    pgdata = _pgdata(data)
    if sys.platform != "win32" and _SHELL_UNSAFE.search(str(pgdata)):
        field = "data" if data is not None else "ATRACE_DATA_DIR"
        raise ConfigError(
            field,
            str(pgdata.parent),
            "the embedded PostgreSQL cannot start in a path with spaces, quotes or shell"
            " characters; set ATRACE_DATA_DIR to a plain path",
        )
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            pgserver = _import_pgserver()
            # pgserver creates the data dir itself but insists that its parent exists.
            pgdata.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with _quiet_runtime_dir():
                server = pgserver.get_server(pgdata, cleanup_mode="stop")
            _servers[pgdata] = server
        return _dsn(server)


def release_embedded(data: pathlib.Path | None = None) -> None:
    """Drop this process's handle on the embedded server; it stops if no other process holds one."""
    pgdata = _pgdata(data)
    with _lock:
        server = _servers.pop(pgdata, None)
        if server is not None:
            server.cleanup()


def _pgdata(data: pathlib.Path | None) -> pathlib.Path:
    # pgserver keys its servers by the resolved path; so must we, or two spellings of one
    # directory would hold two handles.
    return ((data if data is not None else data_dir()) / "pg").expanduser().resolve()


def _import_pgserver() -> ModuleType:
    try:
        with _quiet_runtime_dir():
            import pgserver
    except ImportError as exc:
        raise MissingExtraError("pgserver", "embedded") from exc
    return pgserver


@contextlib.contextmanager
def _quiet_runtime_dir() -> Iterator[None]:
    # pgserver looks up its lock dir through platformdirs, which warns when XDG_RUNTIME_DIR is
    # unset (usual under sudo, cron, containers and CI) and falls back to /run/user/<uid> or a
    # private dir in the temp dir: all pgserver needs, and nothing for the user to act on.
    # Setting XDG_RUNTIME_DIR instead would be the bigger surprise: it would leak into every other
    # library and child process of the program.
    with warnings.catch_warnings():
        # Older platformdirs releases neither have the class nor warn.
        category = getattr(platformdirs, "RuntimeDirWarning", None)
        if category is not None:
            warnings.simplefilter("ignore", category)
        yield


def _dsn(server: Any) -> str:
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        # Windows: pgserver listens on TCP there, and its own URI says where.
        return str(server.get_uri())
    # Built here rather than taken from pgserver's URI, which pastes the socket dir in raw: this
    # one is percent-encoded, and names the port so that a PGPORT in the environment cannot send
    # the client to a socket file that does not exist.
    query = urllib.parse.urlencode(
        {"host": str(info.socket_dir), "port": str(info.port)},
        quote_via=urllib.parse.quote,
        safe="/",
    )
    return f"postgresql://postgres@/postgres?{query}"
