"""Where the ``atrace`` sub-commands find the database: ``--dsn``, ``--schema``, the environment."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_SCHEMA, env


def dsn_option(args: argparse.Namespace) -> str | None:
    return args.dsn or env("ATRACE_DSN")


def schema_option(args: argparse.Namespace) -> str:
    return str(args.schema or env("ATRACE_SCHEMA") or DEFAULT_SCHEMA)


def add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn", help="PostgreSQL DSN (default: $ATRACE_DSN, else the embedded database)"
    )
    p.add_argument(
        "--schema",
        default=env("ATRACE_SCHEMA") or DEFAULT_SCHEMA,
        help="schema name (default: $ATRACE_SCHEMA, else atrace)",
    )


def resolve_dsn(args: argparse.Namespace) -> str:
    dsn = dsn_option(args)
    if dsn is None:
        from .._postgres.embedded import embedded_dsn

        dsn = embedded_dsn()
    return dsn
