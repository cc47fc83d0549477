"""The terminal views of the ``atrace`` command: ``traces``, ``show``, ``tail`` and ``errors``.

Each reads either PostgreSQL directly (``--dsn``, ``ATRACE_DSN``, else the embedded database)
or a collector's query API (``--url``, with ``--api-key`` / ``ATRACE_API_KEY``) through
:mod:`.sources`, and prints with rich (:mod:`.render`), or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from ..._records import KIND_NAMES, Kind, Status
from ...config import DEFAULT_SCHEMA, env
from ...errors import ConfigError
from .._common import EXIT_NOT_FOUND, EXIT_UNREACHABLE, one_line
from .render import (
    attrs_text,
    console,
    dump_json,
    escape,
    fmt_ago,
    fmt_duration,
    fmt_time,
    level_mark,
    status_mark,
)
from .sources import DbSource, Unreachable, UrlSource

__all__ = ("add_view_parsers", "run_view")

# Records arrive as the API's JSON, where kinds are names.
_LOG = KIND_NAMES[Kind.LOG]
_SPAN_START = KIND_NAMES[Kind.SPAN_START]
# The most each view's --limit may ask for: what the collector's API takes.
_MAX_LIMITS = {"traces": 1000, "tail": 1000, "errors": 500}


# ---- commands -------------------------------------------------------------------------------


async def _traces_view(src: Any, args: argparse.Namespace) -> int:
    data = await src.spans(
        since=_since(args.since),
        service=args.service,
        slow_ns=_slow_ns(args.slow),
        errors_only=args.errors,
        limit=args.limit,
    )
    if args.json:
        dump_json(data)
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
            escape(s["service"]),
            f"{mark} {escape(s['name'])}",
            str(s["count"]),
            f"[red]{s['errors']}[/]" if s["errors"] else "0",
            fmt_ago(s["last_seen"], now),
            fmt_duration(s["p50_ns"]),
            fmt_duration(s["p95_ns"]),
        )
    con = console()
    if data["spans"]:
        con.print(table)
    else:
        con.print("no spans in that range")
    return 0


def _span_label(node: dict[str, Any]) -> str:
    label = f"[bold]{escape(node['name'])}[/] {fmt_duration(node['duration_ns'])} "
    label += status_mark(node["status"])
    kind = node.get("span_kind")
    if kind and kind != "internal":
        label += f" [magenta]{escape(kind)}[/]"
    if node.get("in_flight"):
        label += f" [yellow]⏳ in flight ({fmt_duration(node.get('elapsed_ns'))})[/]"
    if node.get("orphan"):
        label += " [dim](parent not found)[/]"
    if node.get("service"):
        label += f" [dim]{escape(node['service'])}[/]"
    return label


def _add_error(tree: Any, rec: dict[str, Any]) -> None:
    if rec.get("status_message") and rec.get("status") == Status.ERROR:
        tree.add(f"[red]status: {escape(rec['status_message'])}[/]")
    if rec.get("error_type") or rec.get("error_message"):
        tree.add(
            f"[red]{escape(rec.get('error_type') or 'error')}: "
            f"{escape(rec.get('error_message') or '')}[/]"
        )
    if rec.get("stack_trace"):
        from rich.text import Text

        tree.add(Text(rec["stack_trace"].rstrip(), style="red dim"))


def _add_log(tree: Any, log: dict[str, Any]) -> None:
    text = (
        f"[dim]{fmt_time(log['ts'])}[/] {level_mark(log['level'])} {escape(log['message'] or '')}"
    )
    extra = attrs_text(log.get("attrs"))
    if extra:
        text += f" [dim]{escape(extra)}[/]"
    node = tree.add(text)
    _add_error(node, log)


def _add_links(tree: Any, node: dict[str, Any]) -> None:
    # Each link as the trace and span it points at (the trace id whole: it is what `atrace
    # show` takes), then its attributes.
    for link in node.get("links") or ():
        if not isinstance(link, dict):
            continue
        text = (
            f"[cyan]↪ link[/] trace {escape(str(link.get('trace_id')))} "
            f"span {escape(str(link.get('span_id')))}"
        )
        extra = attrs_text(link.get("attrs"))
        if extra:
            text += f" [dim]{escape(extra)}[/]"
        tree.add(text)


def _add_span(tree: Any, node: dict[str, Any]) -> None:
    branch = tree.add(_span_label(node))
    extra = attrs_text(node.get("attrs"))
    if extra:
        branch.add(f"[dim]{escape(extra)}[/]")
    _add_links(branch, node)
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
        dump_json(tree_data)
        return 0
    from rich.tree import Tree

    head = (
        f"trace [bold]{tree_data['trace_id']}[/] {fmt_duration(tree_data['duration_ns'])} · "
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
    console().print(root)
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
        dump_json(rec)
        return
    if rec["kind"] == _LOG:
        what = escape(rec["message"] or "")
        lvl = level_mark(rec["level"])
    else:
        what = f"[bold]{escape(rec['name'] or '')}[/] {fmt_duration(rec['duration_ns'])}"
        lvl = status_mark(rec["status"]) if rec["kind"] != _SPAN_START else "[yellow]▶ start[/]"
    line = f"[dim]{fmt_time(rec['ts'])}[/] {lvl} [blue]{escape(rec['service'])}[/] {what}"
    extra = attrs_text(rec.get("attrs"), 100)
    if extra:
        line += f" [dim]{escape(extra)}[/]"
    if rec.get("trace_id"):
        line += f" [dim]trace={rec['trace_id'][:12]}[/]"
    con.print(line)
    if rec.get("error_type"):
        con.print(f"    [red]{escape(rec['error_type'])}: {escape(rec['error_message'] or '')}[/]")


async def _tail_view(src: Any, args: argparse.Namespace) -> int:
    params = _tail_params(args)
    con = None if args.json else console()
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


def _group_label(g: dict[str, Any]) -> str:
    # A collector older than labels sends the type and message alone.
    label = g.get("label")
    if label is None:
        label = f"{g.get('error_type') or ''}: {g.get('message') or ''}"
    return str(label)


async def _errors_view(src: Any, args: argparse.Namespace) -> int:
    data = await src.errors(since=_since(args.since), service=args.service, limit=args.limit)
    if args.json:
        dump_json(data)
        return 0
    from rich.table import Table

    now = time.time_ns()
    table = Table(title=f"error groups since {args.since}", title_justify="left")
    con = console()
    # At 80 columns the error and the trace to open come first; a wide terminal shows the rest.
    wide = con.width >= 120
    # count: occurrences (one per exception, however many spans and logs it passed through);
    # linked: the further records of those exceptions.
    if wide:
        table.add_column("fingerprint", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("linked", justify="right", no_wrap=True)
    if wide:
        table.add_column("first seen", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1, min_width=24)
    if wide:
        table.add_column("sample trace", no_wrap=True)
    for g in data["groups"]:
        label = f"[red]{escape(_group_label(g)[:120])}[/]"
        trace = g.get("trace_id") or "-"
        cells = [str(g["count"]), str(g.get("linked", 0))]
        if wide:
            cells = [g["fingerprint"][:12], *cells, fmt_ago(g["first_seen"], now)]
            cells += [fmt_ago(g["last_seen"], now), label, trace]
        else:
            cells += [fmt_ago(g["last_seen"], now), f"{label}\n[dim]trace {trace}[/]"]
        table.add_row(*cells)
    if data["groups"]:
        con.print(table)
    else:
        con.print("no errors in that range")
    return 0


def _since(text: str) -> int | None:
    from ...collector._query import parse_time

    return parse_time(text, now=time.time_ns(), field="since") if text else None


def _slow_ns(ms: float | None) -> int | None:
    from ...collector._query.params import MAX_SLOW_MS, parse_slow_ms
    from ...errors import QueryError

    try:
        return parse_slow_ms(ms)
    except QueryError:
        raise ConfigError("--slow", ms, f"expected milliseconds from 0 to {MAX_SLOW_MS}") from None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before anything is opened, what no source could answer: a malformed URL, time,
    trace id, level, limit or text (exit 2, one line)."""
    from urllib.parse import urlsplit

    from ...collector._query import parse_filters
    from ...collector._query.params import check_text, parse_trace_param

    if args.url:
        try:
            parts = urlsplit(args.url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError("--url", args.url, f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise ConfigError("--url", args.url, "expected http://HOST[:PORT] or https://...")
    for name in ("service", "project"):
        value = getattr(args, name, None)
        if value is not None:
            check_text(name, value)
    if args.command == "show":
        parse_trace_param(args.trace_id)
        return
    _since(args.since)
    maximum = _MAX_LIMITS[args.command]
    if not 1 <= args.limit <= maximum:
        raise ConfigError("--limit", args.limit, f"expected 1 to {maximum}")
    if args.command == "traces":
        _slow_ns(args.slow)
    if args.command == "tail":
        parse_filters(_tail_params(args), project="-")


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
    p.add_argument("--limit", type=int, default=50, help="at most this many span names")
    p = sub.add_parser("show", help="one trace as a tree, logs and errors inline")
    _add_source_options(p)
    p.add_argument("trace_id")
    p = sub.add_parser("tail", help="recent records; -f to follow new ones live")
    _add_source_options(p)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--service")
    p.add_argument("--level", help="at least this level: debug, info, warning, error")
    p.add_argument(
        "-q",
        dest="q",
        metavar="TEXT",
        help="records holding every word: name, message, error type and message, attribute values",
    )
    p.add_argument("--since", default="1h")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many recent records")
    p = sub.add_parser(
        "errors", help="error groups: fingerprint, occurrences, first/last seen, label"
    )
    _add_source_options(p)
    p.add_argument("--service")
    p.add_argument("--since", default="24h")
    p.add_argument("--limit", type=int, default=50, help="at most this many groups")


_VIEWS = {"traces": _traces_view, "show": _show_view, "tail": _tail_view, "errors": _errors_view}


def run_view(args: argparse.Namespace, resolve_dsn: Any) -> int:
    """Run one view; ``resolve_dsn(args)`` gives the DSN when no ``--url`` is set."""

    check_arguments(args)

    async def main() -> int:
        src: Any
        if args.url:
            src = UrlSource(args.url, args.api_key or env("ATRACE_API_KEY"))
        else:
            src = DbSource(resolve_dsn(args), args.schema, args.project)
        async with src:
            return await _VIEWS[args.command](src, args)

    try:
        return asyncio.run(main())
    except Unreachable as exc:
        print(f"atrace: {one_line(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
