"""``atrace spill status|replay|purge``: the operator's view of the batches spilled to disk."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import dsn_option, schema_option

if TYPE_CHECKING:
    from .._delivery.spill import Spill
    from ..sinks import Batch, Sink

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
    "unreadable_segments",
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


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


def add_spill_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


# ---- spill: shared -------------------------------------------------------------------------


def _spill_dir(args: argparse.Namespace) -> Path:
    from .._delivery.spill import default_spill_dir

    return Path(args.spill_dir).expanduser() if args.spill_dir else default_spill_dir()


def _destination(args: argparse.Namespace) -> tuple[Sink, str]:
    """The sink that --dsn/--schema name, and its spill key (the flusher's directory name)."""
    from ..sinks import resolve
    from ..sinks._base import SinkOptions

    # Without a DSN the pipeline writes to the embedded database; so does its spill.
    sink = resolve(dsn_option(args) or "embedded", schema=schema_option(args))
    return sink, SinkOptions.of(sink).spill_key


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
        from ..errors import ConfigError

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
    segment files holding nothing deliverable (all acked, or all damaged), and leaves those in a
    format this version cannot read.
    """
    from .._delivery.spill import Spill

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
        if total["unreadable_segments"]:
            print(
                f"{total['unreadable_segments']} segment files are in a newer format: kept for"
                " the atrace version that wrote them"
            )
    return 0


# ---- spill replay --------------------------------------------------------------------------


async def _open_destination(sink: Sink) -> str | None:
    """Open the sink; None if that worked, else why it did not (one line)."""
    from ..errors import AtraceError

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
    from .._delivery.retry import Retry, RetryPolicy
    from ..sinks import Batch
    from ..sinks._base import SinkOptions

    classify = SinkOptions.of(sink).classify
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
    from .._delivery.spill import Spill

    sink, key = _destination(args)
    spill = Spill(_spill_dir(args) / key)
    try:
        return asyncio.run(_replay(sink, spill, key))
    finally:
        spill.close()


# ---- spill purge ---------------------------------------------------------------------------


def _confirm_purge(directories: list[Path], area: str) -> bool:
    from .._delivery.spill import Spill

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
    from .._delivery.spill import Spill

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


SPILL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": _spill_status,
    "replay": _spill_replay,
    "purge": _spill_purge,
}
