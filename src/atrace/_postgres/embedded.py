"""The embedded default database: a private PostgreSQL in atrace's data dir, run by pgserver.

The server's life follows the processes that use it. Each process that attaches records its PID
in pgserver's registry (``<data>/pg/.handle_pids.json``); atrace, not pgserver, decides when to
stop, holding ``<data>/pg.lock`` for every change:

- attaching prunes dead PIDs (a user killed by SIGKILL, or by SIGTERM without exit handlers,
  never takes its own out), starts the server if it is down, and adds this process;
- releasing takes this process out, prunes, and stops the server when no live PID remains,
  unless ``atrace db start`` pinned it (``<data>/pg.pinned`` names the postmaster it pinned, so a
  pin outlives neither that server nor a reboot);
- at exit, atrace's own flush may still write to the server (exit handlers run last-registered
  first, so ours would run before it), so the exit handler does not stop the server itself: it
  hands the release to a small detached process that waits for this one to end, then prunes and
  stops as above. An exit path that runs after the last write can call :func:`release_all`;
- ``atrace db status`` prunes too, and stops a server that nobody uses any more.

pgserver starts the server (``get_server(..., cleanup_mode=None)``); its own exit hook, which
would stop the server before atrace's exit flush and never prunes, is unregistered.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import platformdirs

from ..config import env
from ..errors import ConfigError, MissingExtraError

if sys.platform != "win32":
    import fcntl

__all__ = (
    "EmbeddedStatus",
    "data_dir",
    "embedded_dsn",
    "embedded_status",
    "pin_embedded",
    "release_all",
    "release_embedded",
    "stop_embedded",
)

ROOT_DATA_DIR = pathlib.Path("/var/lib/atrace")

# pgserver hands the socket dir (the data dir) to pg_ctl's -o, which goes through /bin/sh
# unquoted: a path with any of these characters splits or expands and PostgreSQL does not start.
_SHELL_UNSAFE = re.compile(r"[\s\"'\\$`;&|<>()*?\[\]]")

_USERS = ".handle_pids.json"  # pgserver's registry of the PIDs using a server, in <data>/pg
_LOCK = "pg.lock"  # held (flock) by every atrace process while it changes the server's state
_PIN = "pg.pinned"  # written by `atrace db start`: the postmaster that outlives its users

# The servers this process attached to: pgdata -> (DSN, postmaster PID).
_servers: dict[pathlib.Path, tuple[str, int]] = {}
_lock = threading.Lock()
_exiting = False  # set by the exit handler: a server attached after it is handed over at once


@dataclasses.dataclass(frozen=True)
class EmbeddedStatus:
    """What ``atrace db status`` reports about the embedded server of one data dir."""

    data: pathlib.Path
    exists: bool  # the data dir exists
    size: int  # bytes on disk under the data dir
    pid: int | None  # the postmaster's PID; None: not running
    port: int | None
    socket_dir: pathlib.Path | None
    dsn: str | None
    pinned: bool  # kept running by `atrace db start`
    users: tuple[tuple[int, str], ...]  # the live processes using it: (PID, command line)
    stopped_idle: bool  # was running with no live user and not pinned, and was stopped now


def data_dir() -> pathlib.Path:
    """Return the directory atrace keeps its own data in (the embedded database lives below it)."""
    configured = env("ATRACE_DATA_DIR")
    if configured is not None:
        return pathlib.Path(configured).expanduser()
    if sys.platform != "win32" and os.geteuid() == 0:
        # As root, pgserver runs PostgreSQL as its own system user and widens the permissions of
        # every parent of the data dir until that user can reach it; under /root that would open
        # root's home to every account on the machine. Root is one user: /var/lib/atrace is its
        # data dir, narrowed back to 0710 once the server is up (see _make_private).
        return ROOT_DATA_DIR
    default = platformdirs.user_data_path("atrace")
    if sys.platform != "win32" and _SHELL_UNSAFE.search(str(default)):
        # macOS puts it under "Application Support", where pgserver cannot start a server.
        return pathlib.Path.home() / ".atrace"
    return default


def embedded_dsn(data: pathlib.Path | None = None) -> str:
    """Start (or reuse) the embedded server on ``<data>/pg`` and return a DSN for it.

    ``data`` defaults to :func:`data_dir`. The server stays up while this process (or another
    one using it) lives; a server another process already runs on the same directory is shared,
    not started twice. The first call blocks while PostgreSQL starts (about a second, longer on
    a fresh directory); from async code, call it through ``asyncio.to_thread``.
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
        held = _servers.get(pgdata)
        if held is not None and _is_alive(held[1]):
            return held[0]
        # Not held, or stopped under us (`atrace db stop`): attach again, which restarts it.
        _import_pgserver()  # before anything is created: without it, nothing can start
        private = _make_data_dir(pgdata.parent) or (data is None and not _configured())
        with _locked(pgdata.parent):
            info = _running_postmaster(pgdata)
            if info is None:
                _unpin(pgdata.parent)  # a pin names a server that ran; it is gone
                info = _start(pgdata)
            _users(pgdata, add=os.getpid())
            if private:
                _make_private(pgdata.parent, info)
        dsn = _dsn(info)
        _servers[pgdata] = (dsn, int(info.pid))
        if _exiting:
            # Attached by the exit flush itself, after our exit handler ran.
            _hand_over([pgdata])
        return dsn


def release_embedded(data: pathlib.Path | None = None) -> None:
    """Drop this process's use of the embedded server; it stops if no live process uses it.

    A server pinned by ``atrace db start`` keeps running. Calling it again, or for a server this
    process does not use, does nothing.
    """
    pgdata = _pgdata(data)
    with _lock:
        if _servers.pop(pgdata, None) is None:
            return
        _settle(pgdata, remove=os.getpid())


def release_all() -> None:
    """Release every embedded server this process uses (for an exit path, after its last write).

    For instance SIGTERM's handler, once it has flushed and before the signal's default action
    ends the process, which skips the exit handler that would hand the release over. Each
    server stops unless another live process uses it or it is pinned. An error releasing one
    (say, its data dir was deleted) does not keep the others running.
    """
    with _lock:
        held = list(_servers)
    for pgdata in held:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            release_embedded(pgdata.parent)


def pin_embedded(data: pathlib.Path | None = None) -> EmbeddedStatus:
    """Start the embedded server if it is down and keep it running until :func:`stop_embedded`.

    Used by ``atrace db start``: the server outlives this process and every other user.
    """
    pgdata = _pgdata(data)
    embedded_dsn(data)
    with _lock, _locked(pgdata.parent):
        info = _running_postmaster(pgdata)
        if info is not None:
            _write_private(pgdata.parent / _PIN, json.dumps(_pin_of(info)))
    release_embedded(data)
    return embedded_status(data)


def stop_embedded(data: pathlib.Path | None = None) -> tuple[int | None, tuple[int, ...]]:
    """Stop the embedded server even if processes use it; drop its pin and its registry.

    Returns the postmaster's PID (None: it was not running) and the live processes that were
    using it, this one aside.
    """
    pgdata = _pgdata(data)
    with _lock:
        _servers.pop(pgdata, None)
        if not pgdata.parent.is_dir():
            return None, ()
        with _locked(pgdata.parent):
            users = tuple(pid for pid in _users(pgdata) if pid != os.getpid())
            _unpin(pgdata.parent)
            info = _running_postmaster(pgdata)
            if info is not None:
                _stop(pgdata, info)
            if pgdata.is_dir():
                _write_users(pgdata, [])
    return (int(info.pid) if info is not None else None), users


def embedded_status(data: pathlib.Path | None = None) -> EmbeddedStatus:
    """Report on the embedded server; prunes dead users and stops it if nobody uses it.

    A server with no live user and no pin is one whose last user died without releasing it
    (SIGKILL, or SIGTERM without exit handlers): stopping it is what that user's exit would have
    done.
    """
    pgdata = _pgdata(data)
    root = pgdata.parent
    with _lock:
        if not root.is_dir():
            return EmbeddedStatus(root, False, 0, None, None, None, None, False, (), False)
        with _locked(root):
            users = _users(pgdata)
            info = _running_postmaster(pgdata)
            pinned = info is not None and _pinned(root, info)
            stopped = False
            if info is not None and not users and not pinned:
                _stop(pgdata, info)
                info, stopped = None, True
            if info is None:
                _unpin(root)
    return EmbeddedStatus(
        data=root,
        exists=True,
        size=_disk_usage(root),
        pid=int(info.pid) if info is not None else None,
        port=info.port if info is not None else None,
        socket_dir=info.socket_dir if info is not None else None,
        dsn=_dsn(info) if info is not None else None,
        pinned=pinned,
        users=tuple((pid, _command_of(pid)) for pid in users),
        stopped_idle=stopped,
    )


# --- the registry of users -----------------------------------------------------------------


@contextlib.contextmanager
def _locked(root: pathlib.Path) -> Iterator[None]:
    """Hold the data dir's lock: one atrace process at a time attaches, releases or stops."""
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform != "win32":
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _users(pgdata: pathlib.Path, *, add: int | None = None, remove: int | None = None) -> list[int]:
    """The live PIDs in pgserver's registry, after pruning the dead ones (and add/remove)."""
    try:
        recorded = json.loads((pgdata / _USERS).read_text())
    except FileNotFoundError:
        recorded = []
    except (OSError, ValueError):
        recorded = []  # torn by a writer that died mid-write: its users will attach again
    if not isinstance(recorded, list):
        recorded = []
    live = [pid for pid in recorded if isinstance(pid, int) and pid != remove and _is_alive(pid)]
    if add is not None and add not in live:
        live.append(add)
    if live != recorded and pgdata.is_dir():
        _write_users(pgdata, live)
    return live


def _write_users(pgdata: pathlib.Path, pids: list[int]) -> None:
    # pgserver's own format (a JSON list of PIDs), written whole or not at all.
    _write_private(pgdata / _USERS, json.dumps(pids))


def _write_private(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _is_alive(pid: int) -> bool:
    psutil = _import("psutil")
    try:
        # A zombie has ended; only its parent has not collected it yet.
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _command_of(pid: int) -> str:
    psutil = _import("psutil")
    try:
        return " ".join(" ".join(psutil.Process(pid).cmdline()).split()) or "?"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"


# --- pinning -------------------------------------------------------------------------------


def _pin_of(info: Any) -> dict[str, object]:
    # The postmaster's PID and start time: a pin left by a server that stopped (or by the boot
    # before a reboot, where the PID may now be another process) does not match the next one.
    return {"pid": int(info.pid), "started": info.start_time.isoformat()}


def _pinned(root: pathlib.Path, info: Any) -> bool:
    try:
        pin = json.loads((root / _PIN).read_text())
    except (OSError, ValueError):
        return False
    return bool(pin == _pin_of(info))


def _unpin(root: pathlib.Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / _PIN).unlink()


# --- starting, stopping, exiting -----------------------------------------------------------


def _running_postmaster(pgdata: pathlib.Path) -> Any:
    """pgserver's PostmasterInfo of the server running on ``pgdata``, or None."""
    if not (pgdata / "postmaster.pid").exists():
        return None
    pgserver = _import_pgserver()
    try:
        info = pgserver.postgres_server.PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return None  # half written: a server starting or stopping outside atrace's lock
    if info is None or not info.is_running():
        return None
    return info


def _start(pgdata: pathlib.Path) -> Any:
    pgserver = _import_pgserver()
    # As root, pgserver opens the parents of the data dir and of its binaries (see _narrow).
    parents = {}
    if _as_root():
        parents = _modes(pgdata.parent)
        parents.update(
            (path, path.stat()) for path in pgserver.postgres_server.POSTGRES_BIN_PATH.parents
        )
    with _quiet_runtime_dir():
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    # atrace decides when to stop: forget pgserver's handle (a later get_server would return it
    # without registering anyone) and its exit hook.
    atexit.unregister(server._cleanup)
    pgserver.PostgresServer._instances.pop(pgdata, None)
    info = server.get_postmaster_info()
    if parents:
        _narrow(parents, _server_group(info))
    return info


def _settle(pgdata: pathlib.Path, *, remove: int | None = None) -> bool:
    """Prune the registry; stop the server if no live process uses it and it is not pinned."""
    if not pgdata.parent.is_dir():
        return False
    with _locked(pgdata.parent):
        users = _users(pgdata, remove=remove)
        info = _running_postmaster(pgdata)
        if info is None or users or _pinned(pgdata.parent, info):
            return False
        _stop(pgdata, info)
        return True


def _stop(pgdata: pathlib.Path, info: Any) -> None:
    pgserver = _import_pgserver()
    psutil = _import("psutil")
    account: dict[str, Any] = {}
    if _as_root():
        # As the server's account and with the server's group, which is what the data dir lets in.
        try:
            account = {"user": info.process.uids().effective, "group": _server_group(info)}
        except psutil.NoSuchProcess:
            return  # it stopped meanwhile
        account["extra_groups"] = []
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        # "fast": open sessions (a live tail, a pool) are disconnected rather than waited for.
        pgserver.pg_ctl(
            ["-w", "-t", "30", "-m", "fast", "stop"],
            pgdata=pgdata,
            cwd="/",  # as root it runs as the server's account, which may not enter our cwd
            timeout=60,
            **account,
        )
    process = info.process
    with contextlib.suppress(psutil.NoSuchProcess):
        if process.is_running():
            process.send_signal(signal.SIGINT)  # what pg_ctl's fast mode sends
            with contextlib.suppress(psutil.TimeoutExpired):
                process.wait(10)


def _at_exit() -> None:
    global _exiting
    with _lock:
        _exiting = True
        held = list(_servers)
    if held:
        _hand_over(held)


def _hand_over(pgdatas: list[pathlib.Path]) -> None:
    """Leave the release of ``pgdatas`` to a detached process that outlives this one."""
    if not sys.executable:
        return  # an embedding host: the next atrace process on this data dir prunes us
    package_root = str(pathlib.Path(__file__).resolve().parents[2])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " from atrace._postgres.embedded import _reap; _reap(int(sys.argv[2]), sys.argv[3:])"
    )
    args = [sys.executable, "-c", code, package_root, str(os.getpid()), *map(str, pgdatas)]
    try:
        child = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C or a signal to this process group does not reach it.
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return
    with warnings.catch_warnings():
        # It is meant to outlive us; not waiting for it is no leak.
        warnings.simplefilter("ignore", ResourceWarning)
        del child


def _reap(pid: int, pgdatas: list[str]) -> None:
    """In the detached process: wait for ``pid`` to end, then settle each server it used."""
    delay = 0.01
    while _is_alive(pid):
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    for pgdata in pgdatas:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _settle(pathlib.Path(pgdata))


def _forget_inherited() -> None:
    # A forked child is not registered as a user of its parent's servers: it attaches anew.
    global _lock, _exiting
    _lock = threading.Lock()
    _servers.clear()
    _exiting = False


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


# --- the data dir and its permissions ------------------------------------------------------


def _configured() -> bool:
    return env("ATRACE_DATA_DIR") is not None


def _as_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _make_data_dir(root: pathlib.Path) -> bool:
    """Create the data dir, private to this user (0700); True if it did not exist."""
    if root.is_dir():
        return False
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)  # whatever the umask
    return True


def _make_private(root: pathlib.Path, info: Any) -> None:
    """Narrow a data dir atrace owns (it made it, or it is the default one) to its user.

    As root, PostgreSQL runs as pgserver's system account, which must traverse the data dir to
    reach ``pg/`` (its own, 0700), for instance to stop the server or touch its socket's lock
    file. pgserver switches only the user id, so the server's processes keep the group of the
    process that started them (root's). Of the ways to let them through, 0711 would let every
    account traverse and an ACL needs file system support; 0710 with the group set to the
    server's own group lets the server (and members of that group: as root, only root) traverse
    and nobody but its owner list or read.
    """
    if _as_root():
        group = _server_group(info)
        if root.stat().st_gid != group:
            os.chown(root, -1, group)
        wanted = 0o710
    else:
        wanted = 0o700
    if stat.S_IMODE(root.stat().st_mode) != wanted:
        root.chmod(wanted)


def _server_group(info: Any) -> int:
    """The effective group id PostgreSQL runs with (see _make_private)."""
    return int(info.process.gids().effective)


def _modes(root: pathlib.Path) -> dict[pathlib.Path, os.stat_result]:
    return {path: path.stat() for path in (root, *root.parents)}


def _narrow(before: dict[pathlib.Path, os.stat_result], group: int) -> None:
    """Undo what pgserver opened as root, keeping what the server needs.

    pgserver adds read and traverse for group and others to every parent of the data dir and of
    its binaries, so that its account can reach them. Each directory it changed gets its old
    mode back, plus traverse only where the server could not traverse it before: for its group
    (``group``, see _make_private) if the directory has that group, else for others. Never read:
    traversing reaches ``pg/`` but lists nothing. While the server starts (a second or two),
    the data dir is listable; what it holds is 0700 or 0600 (``pg/``, the spill, the lock), so
    names are all that shows.
    """
    for path, old in before.items():
        mode = stat.S_IMODE(old.st_mode)
        if stat.S_IMODE(path.stat().st_mode) == mode:
            continue
        if old.st_gid == group:
            path.chmod(mode | stat.S_IXGRP)
        else:
            path.chmod(mode if mode & stat.S_IXOTH else mode | stat.S_IXOTH)


def _disk_usage(root: pathlib.Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(root, onerror=lambda _exc: None):
        for name in (*_dirs, *files):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                blocks = getattr(st, "st_blocks", None)
                total += blocks * 512 if blocks is not None else st.st_size
    return total


# --- pgserver ------------------------------------------------------------------------------


def _pgdata(data: pathlib.Path | None) -> pathlib.Path:
    # pgserver keys its servers by the resolved path; so must we, or two spellings of one
    # directory would hold two handles.
    return ((data if data is not None else data_dir()) / "pg").expanduser().resolve()


def _import_pgserver() -> ModuleType:
    try:
        with _quiet_runtime_dir():
            import pgserver
            import pgserver.postgres_server
    except ImportError as exc:
        raise MissingExtraError("pgserver", "embedded") from exc
    return pgserver


def _import(name: str) -> Any:
    # psutil comes with pgserver (and has no type stubs here): loaded only once a server is used.
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError(name, "embedded") from exc


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


def _dsn(info: Any) -> str:
    if info.socket_dir is None:
        # Windows: pgserver listens on TCP there, and its own URI says where.
        return str(info.get_uri())
    # Built here rather than taken from pgserver's URI, which pastes the socket dir in raw: this
    # one is percent-encoded, and names the port so that a PGPORT in the environment cannot send
    # the client to a socket file that does not exist.
    query = urllib.parse.urlencode(
        {"host": str(info.socket_dir), "port": str(info.port)},
        quote_via=urllib.parse.quote,
        safe="/",
    )
    return f"postgresql://postgres@/postgres?{query}"
