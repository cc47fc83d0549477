"""How the views print: durations, times, levels, statuses and attributes, with rich or as JSON."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ..._records import ORIGIN, STATUS_NAMES, Level, Status, level_name

__all__ = (
    "LEVEL_STYLES",
    "STATUS_MARKS",
    "attrs_text",
    "console",
    "dump_json",
    "escape",
    "fmt_ago",
    "fmt_duration",
    "fmt_time",
    "level_mark",
    "status_mark",
)

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


def fmt_duration(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_ago(ts: int, now: int) -> str:
    s = max(0, (now - ts) // 1_000_000_000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def fmt_time(ts: int) -> str:
    t = time.localtime(ts // 1_000_000_000)
    return time.strftime("%H:%M:%S", t) + f".{ts // 1_000_000 % 1000:03d}"


def status_mark(code: int | None) -> str:
    return STATUS_MARKS.get(code, STATUS_MARKS[Status.UNSET])


def level_mark(level: int) -> str:
    name = level_name(level).upper()
    return f"[{LEVEL_STYLES.get(level, 'white')}]{name:<8}[/]"


def attrs_text(attrs: dict[str, Any] | None, width: int = 160) -> str:
    if not attrs:
        return ""
    text = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in attrs.items() if k != ORIGIN
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def escape(text: Any) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
