"""``atrace db start|stop|status``: the embedded PostgreSQL's lifecycle, for a development session.

Without these the embedded server runs while processes use it and stops when the last one exits.
``start`` pins it (it keeps running with no user, until ``stop``); ``stop`` stops it even while
processes use it; ``status`` says where it is and who uses it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

WIDTH = 80  # the status fits a terminal this wide (but a path or DSN is never cut)
_LABEL = 14  # the column the values start in

_START_HELP = "start the embedded PostgreSQL and keep it running until `atrace db stop`"
_STOP_HELP = "stop the embedded PostgreSQL, even while processes use it"
_STATUS_HELP = "say whether the embedded PostgreSQL runs, where, and which processes use it"
_STOP_DESCRIPTION = (
    "Stop the embedded PostgreSQL of atrace's data directory ($ATRACE_DATA_DIR, else the"
    " default) and drop the pin of `atrace db start`. It stops even while other processes use"
    " it; it says how many did (their next use starts it again)."
)
_STATUS_DESCRIPTION = (
    "Say whether the embedded PostgreSQL runs: its PID, port, socket directory, DSN, data"
    " directory and size on disk, and the live processes using it. Processes that died without"
    " letting go are forgotten, and a server no live process uses (and not pinned by `atrace db"
    " start`) is stopped. Exit status: 0 if it runs, 3 if not."
)


def add_db_commands(dbsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``start``, ``stop`` and ``status`` to the ``atrace db`` sub-commands."""
    start = dbsub.add_parser(
        "start",
        help=_START_HELP,
        description=(
            "Start the embedded PostgreSQL (if it is not running) and keep it running after"
            " this command and every process using it exit, until `atrace db stop`."
        ),
    )
    stop = dbsub.add_parser("stop", help=_STOP_HELP, description=_STOP_DESCRIPTION)
    status = dbsub.add_parser("status", help=_STATUS_HELP, description=_STATUS_DESCRIPTION)
    for parser in (start, stop, status):
        parser.set_defaults(schema=None)  # main() checks a schema name; these use none


def run_start(_args: argparse.Namespace) -> int:
    from .._postgres.embedded import embedded_status, pin_embedded

    before = embedded_status()
    after = pin_embedded()
    if after.pid is None:  # stopped between starting and pinning
        log = after.data / "pg" / "log"
        print(f"atrace: the embedded PostgreSQL stopped as it started; see {log}", file=sys.stderr)
        return 1
    verb = "was already running" if before.pid == after.pid else "started"
    print(f"embedded PostgreSQL {verb} (pid {after.pid}); it keeps running until `atrace db stop`")
    print(f"dsn: {after.dsn}")
    return 0


def run_stop(_args: argparse.Namespace) -> int:
    from .._postgres.embedded import data_dir, stop_embedded

    pid, users = stop_embedded()
    if pid is None:
        print(f"embedded PostgreSQL is not running (data dir {data_dir()})")
        return 0
    used = f"; {_processes(len(users))} used it" if users else "; no live process used it"
    print(f"stopped the embedded PostgreSQL (pid {pid}){used}")
    return 0


def run_status(_args: argparse.Namespace) -> int:
    from .._postgres.embedded import embedded_status

    status = embedded_status()
    if status.pid is None:
        state = "not running"
        if status.stopped_idle:
            state += " (stopped now: no live process used it)"
    else:
        state = "running" + (", kept by `atrace db start`" if status.pinned else "")
    lines = [f"embedded PostgreSQL: {state}"]
    if status.pid is not None:
        lines += [
            _field("pid", str(status.pid)),
            _field("port", str(status.port)),
            _field("socket dir", str(status.socket_dir)),
            _field("dsn", str(status.dsn)),
        ]
    lines.append(_field("data dir", str(status.data)))
    lines.append(_field("on disk", _size(status.size) if status.exists else "(not created yet)"))
    if status.pid is not None:
        lines.append(_field("used by", _processes(len(status.users))))
        for pid, command in status.users:
            lines.append(_fit(" " * _LABEL + f"{pid:>7}  {command}"))
    print("\n".join(lines))
    return 0 if status.pid is not None else 3


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _processes(n: int) -> str:
    return "1 live process" if n == 1 else f"{n} live processes"


def _field(label: str, value: str) -> str:
    line = f"  {label:<{_LABEL - 2}}{value}"
    # Too wide: the value goes whole on a line of its own, where it can be copied from.
    return line if len(line) <= WIDTH else f"  {label}\n    {value}"


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


DB_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start": run_start,
    "stop": run_stop,
    "status": run_status,
}
