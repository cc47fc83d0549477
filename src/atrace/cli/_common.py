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


# Exit codes of every sub-command (README, "In the terminal"): 0 done, 1 nothing found (show),
# 2 bad arguments, 3 database or collector unreachable. A failure is one line on stderr.
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def one_line(exc: BaseException) -> str:
    """An exception as one line, whitespace folded and any password in a DSN or URL hidden."""
    from ..errors import redact

    return redact(" ".join(str(exc).split())) or type(exc).__name__


def failure(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the line to print for a failure of the database, the collector or the
    arguments given for them; None for anything else (a bug: let its traceback show)."""
    import asyncio

    from ..errors import (
        AtraceError,
        AuthenticationError,
        CollectorError,
        PermissionDeniedError,
        ServerError,
        TransportError,
    )

    if isinstance(exc, (TransportError, ServerError)):
        return EXIT_UNREACHABLE, f"atrace: cannot reach the collector: {one_line(exc)}"
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return EXIT_UNREACHABLE, f"atrace: the collector refused the API key: {one_line(exc)}"
    if isinstance(exc, (AtraceError, CollectorError)):
        return EXIT_USAGE, f"atrace: {one_line(exc)}"
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return EXIT_UNREACHABLE, f"atrace: cannot reach the database: {one_line(exc)}"
    # asyncpg's errors, recognised without importing asyncpg (it may not be installed).
    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(exc).__mro__}
    if "asyncpg.ClientConfigurationError" in names:
        return EXIT_USAGE, f"atrace: --dsn: {one_line(exc)}"
    if "asyncpg.PostgresError" in names or "asyncpg.InterfaceError" in names:
        # Refused logins, missing databases, lost connections: the database is not usable.
        return EXIT_UNREACHABLE, f"atrace: cannot use the database: {one_line(exc)}"
    return None
