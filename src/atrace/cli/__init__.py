"""The ``atrace`` command: demo, database set-up, the collector and its API keys, the views of
traces, tail and errors (``_views/``), and the operator's view of the disk spill."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from ._common import add_db_options, dsn_option, failure, resolve_dsn, schema_option
from ._db import DB_COMMANDS, add_db_commands
from ._serve import add_keys_parser, add_serve_parser, missing_extra, run_keys, run_serve
from ._spill import SPILL_COMMANDS, add_spill_parser

__all__ = ("main",)


# What each compiled/twin pair is, in words a user of the command knows.
_SHORT_NAMES = {
    "atrace._pipeline.ring": "ring",
    "atrace._emit.hot": "emit",
    "atrace._pipeline.encode": "row encoder",
    "atrace._formats.pgcopy": "binary COPY",
    "atrace._formats.otlp.pb": "OTLP decoder",
}


class _Version(argparse.Action):
    """``--version``: the version, and which modules run compiled (loaded only when asked)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_version_text())
        parser.exit()


def _version_text() -> str:
    """``atrace X.Y``, then the compiled modules in use, and any that run as pure Python."""
    from .. import __version__
    from .._speedups import PAIRS

    compiled: list[str] = []
    twins: list[str] = []
    missing: list[str] = []
    for facade in PAIRS:
        short = _SHORT_NAMES[facade]
        try:
            module = importlib.import_module(facade)
        except ImportError:  # the OTLP decoder without the otlp extra
            missing.append(short)
            continue
        (compiled if module.IMPLEMENTATION == "cython" else twins).append(short)
    lines = [f"atrace {__version__}"]
    if compiled:
        lines.append(f"compiled: {', '.join(compiled)}")
    if twins:
        lines.append(f"pure Python: {', '.join(twins)}")
    if missing:
        lines.append(f"not installed: {', '.join(missing)}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrace", description="asyncio tracing into PostgreSQL")
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the version and the compiled modules"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a small traced workload and show what was stored")
    add_db_options(demo)
    demo.add_argument("--requests", type=int, default=5, help="concurrent requests to simulate")
    db = sub.add_parser("db", help="database administration")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    init = dbsub.add_parser("init", help="create or migrate atrace's schema")
    add_db_options(init)
    init.add_argument(
        "--text-index",
        action="store_true",
        help="also index full text (faster q searches, about half the ingest rate)",
    )
    retention = dbsub.add_parser(
        "retention",
        help="drop records older than a number of days (whole day partitions)",
        description=(
            "Keep today (UTC) and the DAYS days before it: older day partitions are detached "
            "and dropped, older rows of the default partition and of the batch ledger deleted. "
            "--max-size then drops the oldest partitions left until the records fit."
        ),
    )
    add_db_options(retention)
    retention.add_argument("--days", type=int, required=True, help="days to keep before today")
    retention.add_argument(
        "--max-size", default=None, help="at most this much on disk, e.g. 50GB (oldest go first)"
    )
    retention.add_argument(
        "--errors-days",
        type=int,
        default=None,
        help="keep the traces that mattered (errors, slow, sampled) this many days",
    )
    retention.add_argument(
        "--slow-ms", type=float, default=None, help="with --errors-days: a span this slow matters"
    )
    retention.add_argument(
        "--keep-rate",
        type=float,
        default=0.0,
        help="with --errors-days: also keep this share of the other traces (0 to 1)",
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="say what would go, change nothing"
    )
    add_db_commands(dbsub)
    add_spill_parser(sub)
    add_serve_parser(sub)
    add_keys_parser(sub)
    from ._views import add_view_parsers

    add_view_parsers(sub)
    return parser


async def _db_init(dsn: str, schema: str, text_index: bool = False) -> int:
    import asyncpg

    from .._postgres.schema import ensure_schema, ensure_text_index

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


async def _db_retention(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg

    from .._postgres.retention import Keep, apply_retention, parse_size
    from .._postgres.schema import ensure_schema
    from ..errors import ConfigError

    schema, days, max_size, dry_run = args.schema, args.days, args.max_size, args.dry_run
    if days < 0:
        raise ConfigError("--days", days, "expected 0 or more")
    keep = None
    if args.errors_days is not None:
        if args.errors_days <= days:
            raise ConfigError("--errors-days", args.errors_days, "expected more than --days")
        if not 0.0 <= args.keep_rate <= 1.0:
            raise ConfigError("--keep-rate", args.keep_rate, "expected 0 to 1")
        if args.slow_ms is not None and args.slow_ms <= 0:
            raise ConfigError("--slow-ms", args.slow_ms, "expected more than 0")
        keep = Keep(args.errors_days, args.slow_ms, args.keep_rate)
    elif args.slow_ms is not None or args.keep_rate:
        raise ConfigError("--slow-ms", args.slow_ms, "applies with --errors-days only")
    try:
        max_bytes = None if max_size is None else parse_size(max_size)
    except ValueError as exc:
        raise ConfigError("--max-size", max_size, str(exc)) from None
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_schema(conn, schema)
        report = await apply_retention(
            conn, schema, days=days, max_bytes=max_bytes, dry_run=dry_run, keep=keep
        )
    finally:
        await conn.close()
    for line in report.lines():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``atrace`` console script."""
    args = _parser().parse_args(argv)
    from ..config import check_schema

    try:
        check_schema(schema_option(args))
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(dsn_option(args), args.schema, args.requests)
        if args.command == "db" and args.db_command == "init":
            return asyncio.run(_db_init(resolve_dsn(args), args.schema, args.text_index))
        if args.command == "db" and args.db_command == "retention":
            return asyncio.run(_db_retention(args, resolve_dsn(args)))
        if args.command == "db":
            return DB_COMMANDS[args.db_command](args)
        if args.command == "spill":
            return SPILL_COMMANDS[args.spill_command](args)
        if args.command == "serve":
            return run_serve(args)
        if args.command == "keys":
            return asyncio.run(run_keys(args, resolve_dsn(args)))
        if args.command in ("traces", "show", "tail", "errors"):
            from ._views import run_view

            return run_view(args, resolve_dsn)
    except ImportError as exc:  # an optional dependency missing: one line, no traceback
        line = missing_extra(args.command, exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atrace: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # atrace's own errors, the database's and the collector's: one line and the exit code
        # README documents (2 bad arguments, 3 unreachable); anything else is a bug.
        known = failure(exc)
        if known is None:
            raise
        code, line = known
        print(line, file=sys.stderr)
        return code
    return 1
