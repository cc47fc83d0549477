"""``atrace serve`` and ``atrace keys``: run the collector, manage its API keys; and the one line
any command prints when a dependency it needs is not installed."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from typing import Any

from ..config import env
from ..errors import MissingExtraError
from ._common import add_db_options, resolve_dsn

# What the collector imports, on start or at its first request of a kind: all of the collector
# extra. Looked up before it starts rather than failing at the first OTLP or msgpack request.
_COLLECTOR_MODULES = ("asyncpg", "aiohttp", "msgpack", "opentelemetry.proto", "google.protobuf")
# The extra that installs each optional dependency a command may import (by top-level package).
_EXTRAS = {
    "asyncpg": "pg",
    "pgserver": "embedded",
    "aiohttp": "http",
    "msgpack": "http",
    "rich": "cli",
    "opentelemetry": "otlp",
    "google": "otlp",
}


# The collector's bounds settable by a flag or an ATRACE_* variable (the flag wins):
# (Limits field, variable, type, help). The flag is --field-with-dashes.
def _size(text: str) -> int:
    from .._postgres.retention import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_BOUNDS: tuple[tuple[str, str, Any, str], ...] = (
    (
        "retention_days",
        "ATRACE_RETENTION_DAYS",
        int,
        "drop records older than this many days before today, hourly (0: keep all)",
    ),
    (
        "retention_max_size",
        "ATRACE_RETENTION_MAX_SIZE",
        _size,
        "drop the oldest day partitions past this size on disk, e.g. 50GB (0: no bound)",
    ),
    (
        "retention_errors_days",
        "ATRACE_RETENTION_ERRORS_DAYS",
        int,
        "keep traces with an error, a slow span or in the sample this many days (0: off)",
    ),
    (
        "retention_slow_ms",
        "ATRACE_RETENTION_SLOW_MS",
        float,
        "with errors days: a span at least this slow keeps its trace (0: off)",
    ),
    (
        "retention_keep_rate",
        "ATRACE_RETENTION_KEEP_RATE",
        float,
        "with errors days: the share of other traces kept too (0 to 1)",
    ),
    (
        "query_pool_size",
        "ATRACE_QUERY_POOL_SIZE",
        int,
        "PostgreSQL connections of the read API (apart from ingest)",
    ),
    (
        "max_inflight_queries",
        "ATRACE_MAX_INFLIGHT_QUERIES",
        int,
        "queries answered at once; past it, 503",
    ),
    (
        "max_queries_per_key",
        "ATRACE_MAX_QUERIES_PER_KEY",
        int,
        "queries one API key may have in flight; past it, 429",
    ),
    (
        "max_ingest_per_key",
        "ATRACE_MAX_INGEST_PER_KEY",
        int,
        "ingest requests one API key may have in flight; past it, 429",
    ),
    (
        "ingest_rate",
        "ATRACE_INGEST_RATE",
        float,
        "ingest requests per second per API key; past it, 429",
    ),
    ("ingest_burst", "ATRACE_INGEST_BURST", int, "ingest requests one API key may send at once"),
    ("query_rate", "ATRACE_QUERY_RATE", float, "queries per second per API key; past it, 429"),
    ("query_burst", "ATRACE_QUERY_BURST", int, "queries one API key may send at once"),
    (
        "max_inflight_bytes",
        "ATRACE_MAX_INFLIGHT_BYTES",
        int,
        "bytes of request bodies (inflated) held at once; past it, 503",
    ),
    (
        "max_error_scan",
        "ATRACE_MAX_ERROR_SCAN",
        int,
        "most error rows one /v1/errors request may scan",
    ),
    (
        "max_response_bytes",
        "ATRACE_MAX_RESPONSE_BYTES",
        int,
        "about the most bytes of records one answer carries (a search page stops early)",
    ),
    (
        "header_timeout",
        "ATRACE_HEADER_TIMEOUT",
        float,
        "seconds a connection has to send a complete request head",
    ),
    (
        "body_timeout",
        "ATRACE_BODY_TIMEOUT",
        float,
        "seconds a client has to send a request body (408 after)",
    ),
    (
        "max_connections",
        "ATRACE_MAX_CONNECTIONS",
        int,
        "open connections (kept below the descriptor limit)",
    ),
    (
        "max_connections_per_address",
        "ATRACE_MAX_CONNECTIONS_PER_ADDRESS",
        int,
        "open connections from one client address",
    ),
    (
        "max_tail_subscribers",
        "ATRACE_MAX_TAIL_SUBSCRIBERS",
        int,
        "live-tail streams open at once; past it, 503",
    ),
    ("max_tail_per_key", "ATRACE_MAX_TAIL_PER_KEY", int, "live-tail streams per API key; 429"),
    (
        "tail_queue_bytes",
        "ATRACE_TAIL_QUEUE_BYTES",
        int,
        "bytes queued for one live-tail reader; past it, the reader is dropped",
    ),
    (
        "tail_total_bytes",
        "ATRACE_TAIL_TOTAL_BYTES",
        int,
        "bytes of events held for all live-tail readers; past it, readers over their share "
        "are dropped",
    ),
    (
        "max_value_bytes",
        "ATRACE_MAX_VALUE_BYTES",
        int,
        "bytes of one attribute value as JSON; past it, a marker is stored",
    ),
    ("max_depth", "ATRACE_MAX_DEPTH", int, "nesting of an attribute value; deeper is cut"),
    (
        "late_window",
        "ATRACE_LATE_WINDOW",
        float,
        "seconds a record's time may lie in the past; older records are rejected",
    ),
    (
        "early_window",
        "ATRACE_EARLY_WINDOW",
        float,
        "seconds a record's time may lie in the future (at most a week); later are rejected",
    ),
)


def missing_extra(command: str, exc: ImportError) -> str | None:
    """The line to print for ``exc`` when it is an optional dependency of ``command`` that is not
    installed (``atrace serve needs the collector extra: pip install 'atrace[collector]'``), or
    None for any other import error."""
    if isinstance(exc, MissingExtraError):
        extra: str | None = exc.extra
    else:
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    if command == "serve":
        extra = "collector"
    return f"atrace {command} needs the {extra} extra: pip install 'atrace[{extra}]'"


def _check_collector_modules() -> None:
    for module in _COLLECTOR_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a missing parent package; a module without a spec
            found = False
        if not found:
            raise MissingExtraError(module, "collector")


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..collector._limits import DEFAULT_LIMITS as limits

    serve = sub.add_parser("serve", help="run the collector (HTTP ingest, OTLP, queries)")
    add_db_options(serve)
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
    for field, var, kind, text in _BOUNDS:
        serve.add_argument(
            f"--{field.replace('_', '-')}",
            type=kind,
            # A string default goes through type= too: a bad variable is a usage error.
            default=env(var) or getattr(limits, field),
            help=f"{text} (default: ${var}, else {getattr(limits, field)})",
        )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds requests in flight get to finish at SIGTERM",
    )


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys of the collector, one project each")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key (printed once, never again)")
    add_db_options(create)
    create.add_argument("--project", required=True, help="the project the key writes and reads")
    create.add_argument("--name", help="a label to recognise the key by")
    listing = ksub.add_parser("list", help="list keys (never their secrets)")
    add_db_options(listing)
    listing.add_argument("--project", help="only this project's keys")
    revoke = ksub.add_parser("revoke", help="revoke a key")
    add_db_options(revoke)
    revoke.add_argument("key_id", help="the key's id (the part after atk_), or the whole key")


def run_serve(args: argparse.Namespace) -> int:
    import logging

    _check_collector_modules()
    from ..collector._app import serve
    from ..collector._limits import Limits

    limits = Limits(
        max_body=args.max_body,
        max_inflated=args.max_inflated,
        max_records=args.max_records,
        pool_size=args.pool_size,
        **{field: getattr(args, field) for field, *_ in _BOUNDS},
    )
    dsn = resolve_dsn(args)
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


async def run_keys(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg

    from .._postgres.schema import ensure_schema
    from ..collector import _auth as auth

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
    # Given the whole key, name it by its id: the secret is never printed, nor is an argument
    # that is not a key id (a mistyped or cut secret), only what it should have been.
    key_id = parsed[0] if parsed is not None else args.key_id.strip()
    if not auth.is_key_id(key_id):
        print(
            "atrace: not an API key id (16 hex digits) nor a whole key (atk_<id>_<secret>)",
            file=sys.stderr,
        )
        return 1
    if result is None:
        print(f"atrace: no API key {key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {key_id}" if result else f"{key_id} was already revoked")
    return 0
