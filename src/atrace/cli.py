"""The ``atrace`` command: demo, database set-up, the collector and its API keys, the views of
traces, tail and errors (``views.py``), and the operator's view of the disk spill."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sinks import Batch, Sink
    from .spill import Spill

__all__ = ("main",)

# What `spill status` reports per destination, in table order (rejected_bytes: JSON only).
_STATUS_FIELDS = (
    "pending_batches",
    "pending_records",
    "pending_bytes",
    "rejected_batches",
    "rejected_records",
    "rejected_bytes",
    "segments",
    "corrupt_skipped",
)
_TABLE_HEADERS = (
    "destination",
    "pending\nbatches",
    "pending\nrecords",
    "pending\nsize",
    "rejected\nbatches",
    "rejected\nrecords",
    "segments",
    "corrupt\nframes",
)
# A replayed batch that the sink has not taken in this long counts as a failed attempt.
_REPLAY_WRITE_TIMEOUT = 60.0


def _dsn(args: argparse.Namespace) -> str | None:
    return args.dsn or os.environ.get("ATRACE_DSN") or None


def _schema(args: argparse.Namespace) -> str:
    from .config import DEFAULT_SCHEMA

    return str(args.schema or os.environ.get("ATRACE_SCHEMA") or DEFAULT_SCHEMA)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn", help="PostgreSQL DSN (default: $ATRACE_DSN, else the embedded database)"
    )
    p.add_argument(
        "--schema", default=os.environ.get("ATRACE_SCHEMA") or "atrace", help="schema name"
    )


def _add_spill_options(p: argparse.ArgumentParser, *, one_destination: bool) -> None:
    p.add_argument(
        "--spill-dir",
        help="spill directory (default: $ATRACE_SPILL_DIR, else spill/ in atrace's data directory)",
    )
    scope = "the destination" if one_destination else "only this destination"
    p.add_argument(
        "--dsn",
        help=f"{scope}: PostgreSQL DSN (default: $ATRACE_DSN, else the embedded database)",
    )
    p.add_argument("--schema", help=f"{scope}: schema name (default: $ATRACE_SCHEMA, else atrace)")


def _add_spill_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spill = sub.add_parser("spill", help="inspect, replay or purge batches spilled to disk")
    spsub = spill.add_subparsers(dest="spill_command", required=True)
    status = spsub.add_parser(
        "status", help="what is spilled, per destination (verifies every frame's checksum)"
    )
    _add_spill_options(status, one_destination=False)
    status.add_argument("--json", action="store_true", help="print a JSON object")
    replay = spsub.add_parser("replay", help="send a destination's spilled batches, oldest first")
    _add_spill_options(replay, one_destination=True)
    purge = spsub.add_parser("purge", help="delete spilled batches")
    _add_spill_options(purge, one_destination=False)
    purge.add_argument(
        "--rejected", action="store_true", help="delete the rejected batches, not the pending"
    )
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrace", description="asyncio tracing into PostgreSQL")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"atrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a small traced workload and show what was stored")
    _add_db_options(demo)
    demo.add_argument("--requests", type=int, default=5, help="concurrent requests to simulate")
    db = sub.add_parser("db", help="database administration")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    init = dbsub.add_parser("init", help="create or migrate atrace's schema")
    _add_db_options(init)
    init.add_argument(
        "--text-index",
        action="store_true",
        help="also index full text (faster q searches, about half the ingest rate)",
    )
    _add_spill_parser(sub)
    _add_serve_parser(sub)
    _add_keys_parser(sub)
    from .views import add_view_parsers

    add_view_parsers(sub)
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .collector.limits import DEFAULT_LIMITS as limits

    serve = sub.add_parser("serve", help="run the collector (HTTP ingest, OTLP, queries)")
    _add_db_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=4319, help="port to listen on (0: any free)")
    serve.add_argument(
        "--max-body", type=int, default=limits.max_body, help="largest request body, bytes"
    )
    serve.add_argument(
        "--max-inflated",
        type=int,
        default=limits.max_inflated,
        help="largest size a gzip body may inflate to, bytes",
    )
    serve.add_argument(
        "--max-records", type=int, default=limits.max_records, help="most records a request"
    )
    serve.add_argument(
        "--pool-size", type=int, default=limits.pool_size, help="PostgreSQL connections"
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds requests in flight get to finish at SIGTERM",
    )


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys of the collector, one project each")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key (printed once, never again)")
    _add_db_options(create)
    create.add_argument("--project", required=True, help="the project the key writes and reads")
    create.add_argument("--name", help="a label to recognise the key by")
    listing = ksub.add_parser("list", help="list keys (never their secrets)")
    _add_db_options(listing)
    listing.add_argument("--project", help="only this project's keys")
    revoke = ksub.add_parser("revoke", help="revoke a key")
    _add_db_options(revoke)
    revoke.add_argument("key_id", help="the key's id (the part after atk_), or the whole key")


async def _db_init(dsn: str, schema: str, text_index: bool = False) -> int:
    import asyncpg

    from .schema import ensure_schema, ensure_text_index

    conn = await asyncpg.connect(dsn)
    try:
        version = await ensure_schema(conn, schema)
        if text_index:
            await ensure_text_index(conn, schema)
    finally:
        await conn.close()
    print(
        f"schema {schema} is at version {version}"
        + (" with the full-text index" if text_index else "")
    )
    return 0


def _resolve_dsn(args: argparse.Namespace) -> str:
    dsn = _dsn(args)
    if dsn is None:
        from ._embedded import embedded_dsn

        dsn = embedded_dsn()
    return dsn


# ---- serve and keys --------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import logging

    from .collector.app import serve
    from .collector.limits import Limits

    limits = Limits(
        max_body=args.max_body,
        max_inflated=args.max_inflated,
        max_records=args.max_records,
        pool_size=args.pool_size,
    )
    dsn = _resolve_dsn(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    def ready(url: str) -> None:
        print(f"atrace collector listening on {url} (schema {args.schema})", flush=True)

    asyncio.run(
        serve(
            dsn,
            schema=args.schema,
            host=args.host,
            port=args.port,
            limits=limits,
            shutdown_timeout=args.shutdown_timeout,
            ready=ready,
        )
    )
    return 0


async def _keys(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg

    from .collector import auth
    from .schema import ensure_schema

    conn = await asyncpg.connect(dsn)
    try:
        await ensure_schema(conn, args.schema)
        if args.keys_command == "create":
            key = await auth.create_key(conn, args.schema, args.project, args.name)
            print(key)
            print(
                f"atrace: key for project {args.project!r} created; it is shown only this once",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            keys = await auth.list_keys(conn, args.schema, args.project)
            if not keys:
                print("no API keys")
                return 0
            lines = [["key_id", "project", "name", "created", "status"]]
            for k in keys:
                status = f"revoked {k.revoked_at}" if k.revoked_at else "active"
                lines.append([k.key_id, k.project, k.name or "-", k.created_at, status])
            widths = [max(len(line[i]) for line in lines) for i in range(5)]
            for line in lines:
                print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            return 0
        result = await auth.revoke_key(conn, args.schema, args.key_id)
    finally:
        await conn.close()
    parsed = auth.parse_key(args.key_id)
    # Given the whole key, name it by its id: the secret is never printed.
    key_id = parsed[0] if parsed is not None else args.key_id
    if result is None:
        print(f"atrace: no API key {key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {key_id}" if result else f"{key_id} was already revoked")
    return 0


# ---- spill: shared -------------------------------------------------------------------------


def _spill_dir(args: argparse.Namespace) -> Path:
    from .spill import default_spill_dir

    return Path(args.spill_dir).expanduser() if args.spill_dir else default_spill_dir()


def _destination(args: argparse.Namespace) -> tuple[Sink, str]:
    """The sink that --dsn/--schema name, and its spill key (the flusher's directory name)."""
    from .flusher import _spill_key
    from .sinks import resolve

    # Without a DSN the pipeline writes to the embedded database; so does its spill.
    sink = resolve(_dsn(args) or "embedded", schema=_schema(args))
    return sink, _spill_key(sink)


def _selected(args: argparse.Namespace) -> list[Path]:
    """The destination directories a command acts on: the one --dsn/--schema name, else all."""
    base = _spill_dir(args)
    if args.dsn is not None or args.schema is not None:
        return [base / _destination(args)[1]]
    try:
        return sorted(p for p in base.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        from .errors import ConfigError

        raise ConfigError("spill_dir", str(base), f"cannot read it ({_one_line(exc)})") from None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}es" if word.endswith("ch") else f"{n} {word}s"


# ---- spill status --------------------------------------------------------------------------


def _inspect(directory: Path) -> dict[str, int]:
    """A destination's counts, every frame's checksum verified.

    A replay that acks nothing is the read that verifies checksums; like any replay it deletes
    segment files holding nothing deliverable (all acked, or all damaged).
    """
    from .spill import Spill

    spill = Spill(directory)
    for rejected in (False, True):
        for _batch in spill.replay(rejected=rejected):
            pass
    stats = spill.stats()
    return {field: int(getattr(stats, field)) for field in _STATUS_FIELDS}


def _status_cells(name: str, counts: dict[str, int]) -> list[str]:
    return [
        name,
        str(counts["pending_batches"]),
        str(counts["pending_records"]),
        _size(counts["pending_bytes"]),
        str(counts["rejected_batches"]),
        str(counts["rejected_records"]),
        str(counts["segments"]),
        str(counts["corrupt_skipped"]),
    ]


def _print_plain_table(lines: list[list[str]]) -> None:
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    for line in lines:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        print("  ".join([first, *rest]))


def _print_table(rows: list[tuple[str, dict[str, int]]], total: dict[str, int]) -> None:
    lines = [_status_cells(key, counts) for key, counts in rows]
    footer = _status_cells("total", total)
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        headers = [h.replace("\n", " ") for h in _TABLE_HEADERS]
        _print_plain_table([headers, *lines, footer])
        return
    # The numbers keep their columns in 80 characters; a long destination key folds instead.
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column(_TABLE_HEADERS[0], overflow="fold", min_width=12)
    for header in _TABLE_HEADERS[1:]:
        table.add_column(header, justify="right", min_width=max(map(len, header.split())))
    for line in lines:
        table.add_row(*line)
    table.add_section()
    table.add_row(*footer, style="bold")
    Console().print(table)


def _spill_status(args: argparse.Namespace) -> int:
    base = _spill_dir(args)
    rows = []
    for directory in _selected(args):
        counts = _inspect(directory)
        if any(counts.values()):
            rows.append((directory.name, counts))
    total = {field: sum(counts[field] for _, counts in rows) for field in _STATUS_FIELDS}
    if args.json:
        destinations = [{"key": key, **counts} for key, counts in rows]
        print(json.dumps({"spill_dir": str(base), "destinations": destinations, "total": total}))
    elif not rows:
        print(f"nothing spilled in {base}")
    else:
        _print_table(rows, total)
    return 0


# ---- spill replay --------------------------------------------------------------------------


async def _open_destination(sink: Sink) -> str | None:
    """Open the sink; None if that worked, else why it did not (one line)."""
    from .errors import AtraceError

    try:
        await sink.open()
    except AtraceError:
        raise
    except (OSError, asyncio.TimeoutError) as exc:
        reason = f"cannot reach the database: {_one_line(exc)}"
    except Exception as exc:
        reason = f"cannot open the database: {type(exc).__name__}: {_one_line(exc)}"
    else:
        return None
    await sink.close()
    return reason


async def _write(sink: Sink, batch: Batch) -> None:
    await asyncio.wait_for(sink.write(batch), _REPLAY_WRITE_TIMEOUT)


async def _send_pending(
    sink: Sink, spill: Spill, advance: Callable[[int], None]
) -> tuple[int, int, str | None]:
    """Write each pending batch, oldest first, acking it once stored; stop at the first that
    fails. Returns records and batches sent, and why it stopped (None: nothing left)."""
    from .retry import Retry, RetryPolicy, classify_default
    from .sinks import Batch

    classify = getattr(sink, "classify", None) or classify_default
    # A few quick attempts ride out a blip; an outage ends the run and the rest stays spilled.
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, deadline=10.0)
    records = batches = 0
    failure = None
    with contextlib.closing(spill.replay()) as pending:
        for spilled in pending:
            batch = Batch(list(spilled.rows), spilled.batch_id)
            outcome = await Retry(policy).run(functools.partial(_write, sink, batch), classify)
            if not outcome.delivered:
                error = outcome.error or RuntimeError("not delivered")
                failure = (
                    f"batch {spilled.batch_id} ({_plural(spilled.records, 'record')}) failed: "
                    f"{type(error).__name__}: {_one_line(error)}"
                )
                break
            spill.ack(spilled)
            records += spilled.records
            batches += 1
            advance(spilled.records)
    return records, batches, failure


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A callback advancing a progress bar over ``total`` records: a rich bar when stderr is a
    terminal, else nothing."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        console = None
    else:
        console = Console(stderr=True)
    if console is None or not console.is_terminal:
        yield lambda _n: None
        return
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("records"))
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("replay", total=total)
        yield lambda n: progress.advance(task, n)


async def _replay(sink: Sink, spill: Spill, key: str) -> int:
    before = spill.stats()
    if not before.pending_batches:
        print(f"nothing to replay for {key} in {spill.directory.parent}")
        return 0
    failure = await _open_destination(sink)
    if failure is not None:
        print(f"atrace: {failure} ({before.pending_records} records stay spilled)", file=sys.stderr)
        return 3
    try:
        with _progress(before.pending_records) as advance:
            records, batches, failure = await _send_pending(sink, spill, advance)
    finally:
        await sink.close()
    after = spill.stats()
    summary = f"replayed {_plural(records, 'record')} in {_plural(batches, 'batch')}"
    summary += f" ({after.pending_records} left)"
    if after.corrupt_skipped:
        summary += f"; skipped {_plural(after.corrupt_skipped, 'damaged frame')}"
    print(summary)
    if failure is not None:
        print(f"atrace: replay stopped: {failure}; it stays spilled", file=sys.stderr)
        return 1
    return 0


def _spill_replay(args: argparse.Namespace) -> int:
    from .spill import Spill

    sink, key = _destination(args)
    spill = Spill(_spill_dir(args) / key)
    try:
        return asyncio.run(_replay(sink, spill, key))
    finally:
        spill.close()


# ---- spill purge ---------------------------------------------------------------------------


def _confirm_purge(directories: list[Path], area: str) -> bool:
    from .spill import Spill

    records = 0
    for directory in directories:
        stats = Spill(directory).stats()
        records += stats.rejected_records if area == "rejected" else stats.pending_records
    if not records:
        return True
    where = _plural(len(directories), "destination")
    try:
        answer = input(f"delete {_plural(records, area + ' record')} of {where}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _spill_purge(args: argparse.Namespace) -> int:
    from .spill import Spill

    area = "rejected" if args.rejected else "pending"
    if not args.yes and not sys.stdin.isatty():
        print(f"atrace: purging deletes {area} records for good; add --yes", file=sys.stderr)
        return 2
    directories = _selected(args)
    if not args.yes and not _confirm_purge(directories, area):
        print("nothing purged")
        return 1
    purged = left = 0
    for directory in directories:
        spill = Spill(directory)
        purged += spill.purge(rejected=args.rejected)
        stats = spill.stats()
        left += stats.rejected_records if args.rejected else stats.pending_records
    message = f"purged {_plural(purged, area + ' record')}"
    if left:
        # Segments a running process writes or replays are locked, and purge leaves them be.
        message += f" ({left} left in files a running process holds)"
    print(message)
    return 0


_SPILL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": _spill_status,
    "replay": _spill_replay,
    "purge": _spill_purge,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``atrace`` console script."""
    args = _parser().parse_args(argv)
    from .config import Config
    from .errors import AtraceError

    try:
        Config(schema=_schema(args))
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(_dsn(args), args.schema, args.requests)
        if args.command == "db" and args.db_command == "init":
            return asyncio.run(_db_init(_resolve_dsn(args), args.schema, args.text_index))
        if args.command == "spill":
            return _SPILL_COMMANDS[args.spill_command](args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "keys":
            return asyncio.run(_keys(args, _resolve_dsn(args)))
        if args.command in ("traces", "show", "tail", "errors"):
            from .views import run_view

            return run_view(args, _resolve_dsn)
    except AtraceError as exc:
        print(f"atrace: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"atrace: cannot reach the database: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("atrace: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
