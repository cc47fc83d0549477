"""The ``atrace`` command: demo, database set-up (more views come with the collector)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

__all__ = ("main",)


def _dsn(args: argparse.Namespace) -> str | None:
    return args.dsn or os.environ.get("ATRACE_DSN") or None


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn", help="PostgreSQL DSN (default: $ATRACE_DSN, else the embedded database)"
    )
    p.add_argument(
        "--schema", default=os.environ.get("ATRACE_SCHEMA") or "atrace", help="schema name"
    )


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
    return parser


async def _db_init(dsn: str, schema: str) -> int:
    import asyncpg

    from .schema import ensure_schema

    conn = await asyncpg.connect(dsn)
    try:
        version = await ensure_schema(conn, schema)
    finally:
        await conn.close()
    print(f"schema {schema} is at version {version}")
    return 0


def _resolve_dsn(args: argparse.Namespace) -> str:
    dsn = _dsn(args)
    if dsn is None:
        from ._embedded import embedded_dsn

        dsn = embedded_dsn()
    return dsn


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``atrace`` console script."""
    args = _parser().parse_args(argv)
    from .config import Config
    from .errors import AtraceError

    try:
        Config(schema=args.schema)
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(_dsn(args), args.schema, args.requests)
        if args.command == "db" and args.db_command == "init":
            return asyncio.run(_db_init(_resolve_dsn(args), args.schema))
    except AtraceError as exc:
        print(f"atrace: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"atrace: cannot reach the database: {exc}", file=sys.stderr)
        return 3
    return 1


if __name__ == "__main__":
    sys.exit(main())
