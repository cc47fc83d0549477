"""The terminal views of the ``atrace`` command: ``traces``, ``show``, ``tail`` and ``errors``.

Each reads either PostgreSQL directly (``--dsn``, ``ATRACE_DSN``, else the embedded database)
or a collector's query API (``--url``, with ``--api-key`` / ``ATRACE_API_KEY``), and prints
with rich, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from .._records import KIND_NAMES, STATUS_NAMES, Kind, Level, Status, level_name
from ..config import DEFAULT_SCHEMA, env

__all__ = ("add_view_parsers", "run_view")

LEVEL_STYLES: dict[int, str] = {
    Level.DEBUG: "dim",
    Level.INFO: "cyan",
    Level.WARNING: "yellow",
    Level.ERROR: "red",
    Level.CRITICAL: "bold red",
}
STATUS_MARKS: dict[int | None, str] = {
    Status.UNSET: f"[dim]· {STATUS_NAMES[Status.UNSET]}[/]",
    Status.OK: f"[green]✓ {STATUS_NAMES[Status.OK]}[/]",
    Status.ERROR: f"[red]✗ {STATUS_NAMES[Status.ERROR]}[/]",
}
# Records arrive as the API's JSON, where kinds are names.
_LOG = KIND_NAMES[Kind.LOG]
_SPAN_START = KIND_NAMES[Kind.SPAN_START]
# Exit codes: 0 done, 1 nothing found (show), 2 bad arguments, 3 source unreachable.
EXIT_NOT_FOUND = 1
EXIT_UNREACHABLE = 3


class _Unreachable(Exception):
    """The database or the collector could not be reached; the message says which and why."""


# ---- sources --------------------------------------------------------------------------------


class _DbSource:
    """Reads atrace's tables over one asyncpg connection."""

    def __init__(self, dsn: str, schema: str, project: str) -> None:
        self.dsn, self.schema, self.project = dsn, schema, project
        self.conn: Any = None

    async def __aenter__(self) -> _DbSource:
        import asyncpg

        from .._postgres.session import connection_init

        try:
            self.conn = await asyncpg.connect(self.dsn, timeout=10)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise _Unreachable(f"cannot reach the database ({_where(self.dsn)}): {exc}") from exc
        await connection_init(self.conn)
        exists = await self.conn.fetchval("SELECT to_regclass($1)", f"{self.schema}.records")
        if exists is None:
            await self.conn.close()
            raise _Unreachable(f"no atrace schema {self.schema!r} in the database (atrace db init)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def spans(self, **params: Any) -> dict[str, Any]:
        from ..collector import _query as query

        return await query.spans(self.conn, self.schema, self.project, **params)

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        from ..collector import _query as query

        return await query.trace(self.conn, self.schema, self.project, trace_id)

    async def errors(self, **params: Any) -> dict[str, Any]:
        from ..collector import _query as query

        return await query.errors(self.conn, self.schema, self.project, **params)

    async def recent(self, params: dict[str, str]) -> list[dict[str, Any]]:
        from ..collector import _query as query

        filters = query.parse_filters(params, project=self.project)
        return list((await query.search(self.conn, self.schema, filters))["records"])

    async def follow(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        import asyncpg

        from ..collector import _query as query
        from ..collector._tail import TailHub

        filters = query.parse_filters(params, project=self.project, default_range_ns=None)
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        hub = TailHub(self.schema)
        await hub.start(pool, dsn=self.dsn)
        sub = hub.subscribe(filters)
        try:
            while True:
                for row in await sub.take():
                    yield query.record_json(row)
        finally:
            hub.unsubscribe(sub)
            await hub.stop()
            await pool.close()


class _UrlSource:
    """Reads a collector's query API."""

    def __init__(self, url: str, api_key: str | None) -> None:
        from ..client import AsyncClient

        self.url = url
        self.client = AsyncClient(url, api_key=api_key)

    async def __aenter__(self) -> _UrlSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def _call(self, coro: Any) -> Any:
        from ..client import AuthenticationError, NotFoundError, TransportError

        try:
            return await coro
        except TransportError as exc:
            raise _Unreachable(f"cannot reach the collector at {self.url}: {exc}") from exc
        except AuthenticationError as exc:
            raise _Unreachable(f"the collector at {self.url} refused the API key: {exc}") from exc
        except NotFoundError:
            return None

    async def spans(self, **params: Any) -> dict[str, Any]:
        return await self._call(self.client.spans(**_wire(params)))  # type: ignore[no-any-return]

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        return await self._call(self.client.trace(trace_id))  # type: ignore[no-any-return]

    async def errors(self, **params: Any) -> dict[str, Any]:
        return await self._call(self.client.errors(**_wire(params)))  # type: ignore[no-any-return]

    async def recent(self, params: dict[str, str]) -> list[dict[str, Any]]:
        page = await self._call(self.client.search_page(**params))
        return list(page["records"]) if page else []

    async def follow(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        from ..client import TransportError

        filters: dict[str, Any] = dict(params)
        try:
            async with self.client.tail(**filters) as stream:
                async for rec in stream:
                    yield rec
        except TransportError as exc:
            raise _Unreachable(f"lost the collector at {self.url}: {exc}") from exc


def _wire(params: dict[str, Any]) -> dict[str, Any]:
    # Keyword names of the query functions → the API's parameter names.
    out = {k: v for k, v in params.items() if v is not None and v is not False}
    if "slow_ns" in out:
        out["slow_ms"] = out.pop("slow_ns") / 1e6
    if out.pop("errors_only", False):
        out["errors"] = "true"
    return out


def _where(dsn: str) -> str:
    # host:port/db of a DSN, never its password.
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    except ValueError:
        return "the configured DSN"


# ---- formatting -----------------------------------------------------------------------------


def _fmt_duration(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def _fmt_ago(ts: int, now: int) -> str:
    s = max(0, (now - ts) // 1_000_000_000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _fmt_time(ts: int) -> str:
    t = time.localtime(ts // 1_000_000_000)
    return time.strftime("%H:%M:%S", t) + f".{ts // 1_000_000 % 1000:03d}"


def _status(code: int | None) -> str:
    return STATUS_MARKS.get(code, STATUS_MARKS[Status.UNSET])


def _level(level: int) -> str:
    name = level_name(level).upper()
    return f"[{LEVEL_STYLES.get(level, 'white')}]{name:<8}[/]"


def _attrs_text(attrs: dict[str, Any] | None, width: int = 160) -> str:
    if not attrs:
        return ""
    text = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in attrs.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


# ---- commands -------------------------------------------------------------------------------


async def _traces_view(src: Any, args: argparse.Namespace) -> int:
    data = await src.spans(
        since=_since(args.since),
        service=args.service,
        slow_ns=None if args.slow is None else int(args.slow * 1_000_000),
        errors_only=args.errors,
        limit=args.limit,
    )
    if args.json:
        _dump(data)
        return 0
    from rich.table import Table

    now = time.time_ns()
    from rich import box

    table = Table(title=f"spans since {args.since}", title_justify="left", box=box.SIMPLE_HEAD)
    # Figures never wrap; the name (after the last status, ✓ or ✗) takes the width that is left.
    table.add_column("service", overflow="fold", max_width=16)
    table.add_column("span", overflow="fold", ratio=1, min_width=12)
    for col in ("count", "errors", "last seen", "p50", "p95"):
        table.add_column(col, justify="left" if col == "last seen" else "right", no_wrap=True)
    for s in data["spans"]:
        mark = "[red]✗[/]" if s["last_status"] == Status.ERROR else "[green]✓[/]"
        table.add_row(
            _escape(s["service"]),
            f"{mark} {_escape(s['name'])}",
            str(s["count"]),
            f"[red]{s['errors']}[/]" if s["errors"] else "0",
            _fmt_ago(s["last_seen"], now),
            _fmt_duration(s["p50_ns"]),
            _fmt_duration(s["p95_ns"]),
        )
    con = _console()
    if data["spans"]:
        con.print(table)
    else:
        con.print("no spans in that range")
    return 0


def _span_label(node: dict[str, Any]) -> str:
    label = f"[bold]{_escape(node['name'])}[/] {_fmt_duration(node['duration_ns'])} "
    label += _status(node["status"])
    if node.get("in_flight"):
        label += f" [yellow]⏳ in flight ({_fmt_duration(node.get('elapsed_ns'))})[/]"
    if node.get("orphan"):
        label += " [dim](parent not found)[/]"
    if node.get("service"):
        label += f" [dim]{_escape(node['service'])}[/]"
    return label


def _add_error(tree: Any, rec: dict[str, Any]) -> None:
    if rec.get("error_type") or rec.get("error_message"):
        tree.add(
            f"[red]{_escape(rec.get('error_type') or 'error')}: "
            f"{_escape(rec.get('error_message') or '')}[/]"
        )
    if rec.get("stack_trace"):
        from rich.text import Text

        tree.add(Text(rec["stack_trace"].rstrip(), style="red dim"))


def _add_log(tree: Any, log: dict[str, Any]) -> None:
    text = f"[dim]{_fmt_time(log['ts'])}[/] {_level(log['level'])} {_escape(log['message'] or '')}"
    extra = _attrs_text(log.get("attrs"))
    if extra:
        text += f" [dim]{_escape(extra)}[/]"
    node = tree.add(text)
    _add_error(node, log)


def _add_span(tree: Any, node: dict[str, Any]) -> None:
    branch = tree.add(_span_label(node))
    extra = _attrs_text(node.get("attrs"))
    if extra:
        branch.add(f"[dim]{_escape(extra)}[/]")
    _add_error(branch, node)
    items = [(log["ts"], 0, log) for log in node.get("logs", [])]
    items += [(child["start"], 1, child) for child in node.get("children", [])]
    for _, is_span, item in sorted(items, key=lambda t: (t[0], t[1])):
        if is_span:
            _add_span(branch, item)
        else:
            _add_log(branch, item)


async def _show_view(src: Any, args: argparse.Namespace) -> int:
    tree_data = await src.trace(args.trace_id)
    if tree_data is None:
        print(f"atrace: no trace {args.trace_id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        _dump(tree_data)
        return 0
    from rich.tree import Tree

    head = (
        f"trace [bold]{tree_data['trace_id']}[/] {_fmt_duration(tree_data['duration_ns'])} · "
        f"{tree_data['span_count']} spans · {tree_data['log_count']} logs"
    )
    if tree_data["error_count"]:
        head += f" · [red]{tree_data['error_count']} errors[/]"
    if tree_data["in_flight"]:
        head += " · [yellow]in flight[/]"
    root = Tree(head)
    # Logs outside any span and root spans, in time order.
    items = [(log["ts"], 0, log) for log in tree_data.get("logs", [])]
    items += [(span["start"], 1, span) for span in tree_data["spans"]]
    for _, is_span, item in sorted(items, key=lambda t: (t[0], t[1])):
        if is_span:
            _add_span(root, item)
        else:
            _add_log(root, item)
    _console().print(root)
    if tree_data.get("truncated"):
        print("atrace: the trace has more records than shown", file=sys.stderr)
    return 0


def _tail_params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    if args.service:
        params["service"] = args.service
    if args.level:
        params["level"] = args.level
    if args.q:
        params["q"] = args.q
    return params


def _print_record(con: Any, rec: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _dump(rec)
        return
    if rec["kind"] == _LOG:
        what = _escape(rec["message"] or "")
        lvl = _level(rec["level"])
    else:
        what = f"[bold]{_escape(rec['name'] or '')}[/] {_fmt_duration(rec['duration_ns'])}"
        lvl = _status(rec["status"]) if rec["kind"] != _SPAN_START else "[yellow]▶ start[/]"
    line = f"[dim]{_fmt_time(rec['ts'])}[/] {lvl} [blue]{_escape(rec['service'])}[/] {what}"
    extra = _attrs_text(rec.get("attrs"), 100)
    if extra:
        line += f" [dim]{_escape(extra)}[/]"
    if rec.get("trace_id"):
        line += f" [dim]trace={rec['trace_id'][:12]}[/]"
    con.print(line)
    if rec.get("error_type"):
        con.print(
            f"    [red]{_escape(rec['error_type'])}: {_escape(rec['error_message'] or '')}[/]"
        )


async def _tail_view(src: Any, args: argparse.Namespace) -> int:
    params = _tail_params(args)
    con = None if args.json else _console()
    recent = await src.recent({**params, "limit": str(args.limit), "since": args.since})
    for rec in reversed(recent):
        _print_record(con, rec, args.json)
    if not args.follow:
        return 0
    sys.stdout.flush()
    async for rec in src.follow(params):
        _print_record(con, rec, args.json)
        sys.stdout.flush()
    return 0


async def _errors_view(src: Any, args: argparse.Namespace) -> int:
    data = await src.errors(since=_since(args.since), service=args.service, limit=args.limit)
    if args.json:
        _dump(data)
        return 0
    from rich.table import Table

    now = time.time_ns()
    table = Table(title=f"error groups since {args.since}", title_justify="left")
    for col in ("fingerprint", "count", "first seen", "last seen"):
        table.add_column(col, justify="right" if col == "count" else "left", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1)
    table.add_column("sample trace", no_wrap=True)
    for g in data["groups"]:
        table.add_row(
            g["fingerprint"][:12],
            str(g["count"]),
            _fmt_ago(g["first_seen"], now),
            _fmt_ago(g["last_seen"], now),
            f"[red]{_escape(g['error_type'] or '')}[/]: {_escape((g.get('message') or '')[:80])}",
            g.get("trace_id") or "-",
        )
    con = _console()
    if data["groups"]:
        con.print(table)
    else:
        con.print("no errors in that range")
    return 0


def _since(text: str) -> int | None:
    from ..collector._query import parse_time

    return parse_time(text, now=time.time_ns(), field="since") if text else None


# ---- wiring ---------------------------------------------------------------------------------


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn", help="PostgreSQL DSN (default: $ATRACE_DSN, else the embedded database)"
    )
    p.add_argument("--schema", default=env("ATRACE_SCHEMA") or DEFAULT_SCHEMA)
    p.add_argument("--project", default="default", help="project to read (with --dsn)")
    p.add_argument(
        "--url",
        default=env("ATRACE_URL"),
        help="a collector's base URL instead of the database ($ATRACE_URL)",
    )
    p.add_argument("--api-key", default=None, help="the collector's API key ($ATRACE_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_view_parsers(sub: Any) -> None:
    """Add ``traces``, ``show``, ``tail`` and ``errors`` to the ``atrace`` command."""
    p = sub.add_parser("traces", help="spans by name: status, count, last seen, p50/p95, errors")
    _add_source_options(p)
    p.add_argument("--service")
    p.add_argument("--since", default="1h", help="how far back: 15m, 2h, 1d or ISO 8601")
    p.add_argument("--errors", action="store_true", help="only span names that failed")
    p.add_argument("--slow", type=float, metavar="MS", help="only spans that took at least MS")
    p.add_argument("--limit", type=int, default=50)
    p = sub.add_parser("show", help="one trace as a tree, logs and errors inline")
    _add_source_options(p)
    p.add_argument("trace_id")
    p = sub.add_parser("tail", help="recent records; -f to follow new ones live")
    _add_source_options(p)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--service")
    p.add_argument("--level", help="at least this level: debug, info, warning, error")
    p.add_argument("-q", dest="q", metavar="TEXT", help="full-text filter")
    p.add_argument("--since", default="1h")
    p.add_argument("-n", "--limit", type=int, default=20)
    p = sub.add_parser("errors", help="error groups: fingerprint, count, first/last seen")
    _add_source_options(p)
    p.add_argument("--service")
    p.add_argument("--since", default="24h")
    p.add_argument("--limit", type=int, default=50)


_VIEWS = {"traces": _traces_view, "show": _show_view, "tail": _tail_view, "errors": _errors_view}


def run_view(args: argparse.Namespace, resolve_dsn: Any) -> int:
    """Run one view; ``resolve_dsn(args)`` gives the DSN when no ``--url`` is set."""

    async def main() -> int:
        src: Any
        if args.url:
            src = _UrlSource(args.url, args.api_key or env("ATRACE_API_KEY"))
        else:
            src = _DbSource(resolve_dsn(args), args.schema, args.project)
        async with src:
            return await _VIEWS[args.command](src, args)

    try:
        return asyncio.run(main())
    except _Unreachable as exc:
        print(f"atrace: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
