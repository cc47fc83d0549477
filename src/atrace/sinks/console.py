"""Console sink: each batch as an indented trace tree on a terminal, or as JSON lines elsewhere."""

from __future__ import annotations

import datetime as dt
import io
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import orjson

from .._emit.ids import format_span_id
from .._pipeline.sanitize import sanitize_text, sanitize_value
from .._records import (
    ATTRS,
    COLUMNS,
    DURATION_NS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    KIND,
    KIND_NAMES,
    LEVEL,
    MESSAGE,
    NAME,
    ORIGIN,
    PARENT_ID,
    SERVICE,
    SPAN_ID,
    SPAN_KIND,
    SPAN_KIND_NAMES,
    STACK_TRACE,
    STATUS,
    STATUS_MESSAGE,
    TRACE_ID,
    TS,
    Batch,
    Kind,
    Level,
    Status,
    level_name,
)
from ..errors import ConfigError, MissingExtraError

__all__ = ("ConsoleSink", "format_duration", "json_line")

_MODES = ("auto", "tree", "json")
_NCOLS = len(COLUMNS)
# A tuple, not a set: a broken row's kind may be unhashable, and printing it must not fail.
_SPAN_KINDS = (Kind.SPAN_START, Kind.SPAN_END, Kind.SPAN)
# A span announced at its start and ended in the same batch: the two rows make one node.
_START_AND_END = {Kind.SPAN_START, Kind.SPAN_END}
_EPOCH = dt.datetime(1970, 1, 1)
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1
# Text shown on a terminal is capped so that one huge value cannot flood the screen.
_TEXT_LIMIT = 4_096
_VALUE_LIMIT = 200
# C0/C1 controls other than tab and newline could move the cursor or recolour the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LEVEL_STYLES: dict[int, str] = {
    Level.DEBUG: "blue",
    Level.INFO: "green",
    Level.WARNING: "yellow",
    Level.ERROR: "red",
    Level.CRITICAL: "bold red",
}


def format_duration(ns: Any) -> str:
    """A duration in nanoseconds in the largest unit that keeps it readable (ns, µs, ms, s)."""
    if not isinstance(ns, (int, float)) or isinstance(ns, bool) or ns != ns:
        return str(ns)
    if abs(ns) < 1_000:
        return f"{ns:.0f}ns"
    if abs(ns) < 1_000_000:
        return f"{ns / 1e3:.1f}µs"
    if abs(ns) < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _safe_str(value: Any) -> str:
    try:
        return value if isinstance(value, str) else str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__qualname__}>"


def _fields(row: Any) -> tuple[Any, ...]:
    # A short, long or non-tuple row (a bug upstream) is padded or cut rather than refused.
    if type(row) is tuple and len(row) == _NCOLS:
        return row
    try:
        items = tuple(row)
    except TypeError:
        items = (row,)
    return items[:_NCOLS] + (None,) * (_NCOLS - len(items))


def _rfc3339(ns: Any) -> str | None:
    if not isinstance(ns, int) or isinstance(ns, bool):
        return None
    try:
        moment = _EPOCH + dt.timedelta(microseconds=ns // 1000)
        return moment.isoformat(timespec="microseconds") + "Z"
    except (OverflowError, ValueError):
        return None


def _trace_hex(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    hex_attr = getattr(value, "hex", None)  # uuid.UUID
    if isinstance(hex_attr, str):
        return hex_attr
    return _safe_str(value)


def _span_hex(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and _I64_MIN <= value <= _U64_MAX:
        return format_span_id(value)
    return _safe_str(value)


def _level_name(level: Any) -> str:
    if isinstance(level, int) and not isinstance(level, bool):
        return level_name(level)
    return _safe_str(level).lower()


def _decode_attrs(attrs: Any) -> Any:
    """Attributes as a Python value; bytes that are not JSON come back as (replaced) text."""
    if attrs is None or isinstance(attrs, (dict, list)):
        return attrs
    if isinstance(attrs, (bytes, bytearray, memoryview, str)):
        try:
            return orjson.loads(attrs)
        except orjson.JSONDecodeError:
            if isinstance(attrs, str):
                return attrs
            return bytes(attrs).decode("utf-8", "replace")
    return attrs


def _json_object(row: tuple[Any, ...]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    ts = row[TS]
    text_ts = _rfc3339(ts)
    if text_ts is not None:
        obj["ts"] = text_ts
    if ts is not None:
        obj["ts_ns"] = ts
    for i in range(1, _NCOLS):
        value = row[i]
        if value is None:
            continue
        if i == KIND:
            value = KIND_NAMES.get(value, value) if isinstance(value, int) else value
        elif i == SPAN_KIND:
            # By name, as the query API gives it.
            value = SPAN_KIND_NAMES.get(value, value) if isinstance(value, int) else value
        elif i == TRACE_ID:
            value = _trace_hex(value)
        elif i in (SPAN_ID, PARENT_ID):
            value = _span_hex(value)
        elif i == ATTRS:
            value = _decode_attrs(value)
        obj[COLUMNS[i]] = value
        if i == LEVEL:
            obj["level_name"] = _level_name(value)
    return obj


def json_line(row: Any) -> bytes:
    """One row as a JSON object on one line (no trailing newline); never raises."""
    try:
        obj = _json_object(_fields(row))
    except Exception as exc:  # a value whose __str__ / __hash__ misbehaves
        obj = {
            "error_type": type(exc).__qualname__,
            "message": f"unrenderable row: {_safe_str(row)}",
        }
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):
        # Integers beyond 64 bits, lone surrogates, NaN or foreign types: the encoder's slow path.
        try:
            return orjson.dumps(sanitize_value(obj, _TEXT_LIMIT * 8), default=_safe_str)
        except Exception:
            return orjson.dumps({"message": f"unrenderable row: {_safe_str(row)[:_TEXT_LIMIT]}"})


def _clean(value: Any, limit: int = _TEXT_LIMIT) -> str:
    # sanitize_text drops NUL and lone surrogates (which a strict stream would refuse to encode).
    text = sanitize_text(_safe_str(value), limit)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _attr_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
        # Quote only when a bare value would be ambiguous in a `k=v k=v` line.
        if not text or any(c.isspace() or c in '="' for c in text):
            text = orjson.dumps(text).decode()
    else:
        try:
            text = orjson.dumps(value, default=_safe_str).decode()
        except (orjson.JSONEncodeError, TypeError):
            text = _safe_str(value)
    if len(text) > _VALUE_LIMIT:
        text = text[:_VALUE_LIMIT] + "…"
    return _clean(text)


def _attr_pairs(attrs: Any) -> list[str]:
    value = _decode_attrs(attrs)
    if value is None:
        return []
    if isinstance(value, Mapping):
        # The link to an exception's first record is for error groups, not for reading.
        return [
            f"{_clean(k, _VALUE_LIMIT)}={_attr_value(v)}" for k, v in value.items() if k != ORIGIN
        ]
    return [f"attrs={_attr_value(value)}"]


def _sort_key(ts: Any) -> int:
    # Rows with an odd ts sort last instead of breaking the comparison.
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else 1 << 200


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return _safe_str(value)
    return value


class _Node:
    """A row placed in a trace tree; a span's start and end rows in one batch share one node."""

    __slots__ = ("children", "row", "ts")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.ts = _sort_key(row[TS])
        self.children: list[_Node] = []


def _forest(rows: list[tuple[Any, ...]]) -> list[_Node]:
    """Roots of one trace: spans under their parent, logs under their span, siblings by start."""
    nodes: list[_Node] = []
    spans: dict[Any, _Node] = {}
    for row in rows:
        kind = row[KIND]
        sid = _hashable(row[SPAN_ID])
        if kind in _SPAN_KINDS and sid is not None:
            known = spans.get(sid)
            if known is not None and {known.row[KIND], kind} == _START_AND_END:
                # The end row carries the duration and outcome; the start row adds nothing.
                if kind == Kind.SPAN_END:
                    known.row = row
                continue
            node = _Node(row)
            spans.setdefault(sid, node)
        else:
            node = _Node(row)
        nodes.append(node)

    roots: list[_Node] = []
    for node in nodes:
        row = node.row
        if row[KIND] == Kind.LOG:
            parent = spans.get(_hashable(row[SPAN_ID]))
        else:
            parent = spans.get(_hashable(row[PARENT_ID]))
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)

    # Each node keeps only children not yet placed, so every node prints exactly once; a parent
    # cycle (corrupt ids) leaves nodes no root reaches, and the first of them becomes a root.
    seen: set[int] = set()

    def claim(start: _Node) -> None:
        seen.add(id(start))
        stack = [start]
        while stack:
            node = stack.pop()
            kept = [c for c in node.children if id(c) not in seen]
            seen.update(id(c) for c in kept)
            node.children = kept
            stack.extend(kept)

    for node in list(roots):
        claim(node)
    for node in nodes:
        if id(node) not in seen:
            roots.append(node)
            claim(node)
    return roots


class ConsoleSink:
    """Prints batches for a developer: a trace tree on a terminal, JSON lines otherwise.

    The stream defaults to ``sys.stderr``, looked up at each write so that redirection (pytest's
    capture, ``contextlib.redirect_stderr``) is followed. stderr, as for
    :class:`logging.StreamHandler`, keeps diagnostics out of a program's own output on stdout,
    which may be piped elsewhere.

    ``mode="auto"`` draws trees when the stream is a terminal and writes JSON lines otherwise, so
    that piping into ``jq`` or a log shipper gets a machine format. ``color=None`` lets rich decide
    (terminal, ``NO_COLOR``, ``FORCE_COLOR``); ``True`` or ``False`` force it. Tree mode needs rich
    (the ``cli`` extra); ``auto`` falls back to JSON lines without it.

    Writing never raises for a closed or broken stream: the batch is dropped, ``errors`` counts it.
    """

    name = "console"

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        mode: str = "auto",
        color: bool | None = None,
        show_attrs: bool = True,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError("mode", mode, "expected 'auto', 'tree' or 'json'")
        if color is not None and not isinstance(color, bool):
            raise ConfigError("color", color, "expected True, False or None")
        self._stream = stream
        self.mode = mode
        self.color = color
        self.show_attrs = show_attrs
        self.errors = 0
        self._consoles: dict[bool, Any] = {}
        self._rich: Any = None

    def __repr__(self) -> str:
        return f"ConsoleSink(mode={self.mode!r}, errors={self.errors})"

    @property
    def stream(self) -> TextIO | None:
        """Where output goes: the given stream, else ``sys.stderr`` (None when there is none)."""
        return self._stream if self._stream is not None else sys.stderr

    async def open(self) -> None:
        """Check that tree mode can run: a missing extra shows at start, not at the first batch."""
        if self.mode == "tree":
            self._load_rich()

    async def write(self, batch: Batch) -> None:
        """Print the batch; output is small and the stream is local, so this does not wait."""
        rows = batch.rows
        stream = self.stream
        if not rows or stream is None:
            return
        tty = _isatty(stream)
        if self.mode == "json" or (self.mode == "auto" and (not tty or not self._have_rich())):
            data = b"\n".join([json_line(row) for row in rows]) + b"\n"
            text = data.decode("utf-8")
        else:
            text = self.render_tree(rows, tty=tty)
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            # A closed stream (ValueError), a closed pipe or a full disk must not stop the flusher.
            self.errors += 1

    async def close(self) -> None:
        """Flush the stream; it is not ours to close."""
        stream = self.stream
        if stream is None:
            return
        try:
            stream.flush()
        except (OSError, ValueError):
            self.errors += 1

    # -- tree rendering ----------------------------------------------------------------------

    def _load_rich(self) -> Any:
        if self._rich is None:
            try:
                import rich.console
                import rich.text
            except ImportError:
                raise MissingExtraError("rich", "cli") from None
            self._rich = rich
        return self._rich

    def _have_rich(self) -> bool:
        try:
            self._load_rich()
        except MissingExtraError:
            return False
        return True

    def _console(self, tty: bool) -> Any:
        console = self._consoles.get(tty)
        if console is None:
            rich = self._load_rich()
            if self.color is False:
                options: dict[str, Any] = {"color_system": None, "no_color": True}
            elif self.color is True:
                options = {"color_system": "standard", "force_terminal": True}
            else:
                # None lets rich read FORCE_COLOR when the stream is not a terminal.
                options = {"color_system": "auto", "force_terminal": True if tty else None}
            # Rendering goes to a private buffer and the sink writes the text itself: rich's own
            # write path answers a broken pipe by redirecting stdout and raising SystemExit.
            console = rich.console.Console(
                file=io.StringIO(), highlight=False, markup=False, emoji=False, **options
            )
            self._consoles[tty] = console
        return console

    def render_tree(self, rows: Iterable[Any], *, tty: bool = False) -> str:
        """The text tree mode prints for these rows (with ANSI styles when colour is on)."""
        rich = self._load_rich()
        Text = rich.text.Text
        lines: list[Any] = []
        untraced: list[tuple[Any, ...]] = []
        traces: dict[Any, list[tuple[Any, ...]]] = {}
        for raw in rows:
            row = _fields(raw)
            trace = _hashable(_trace_hex(row[TRACE_ID]))
            if trace is None:
                untraced.append(row)
            else:
                traces.setdefault(trace, []).append(row)
        for row in sorted(untraced, key=lambda r: _sort_key(r[TS])):
            self._render(Text, lines, _Node(row), None, with_time=True)
        ordered = sorted(traces.items(), key=lambda kv: min(_sort_key(r[TS]) for r in kv[1]))
        for trace_id, trace_rows in ordered:
            first = min(trace_rows, key=lambda r: _sort_key(r[TS]))
            header = Text()
            header.append("trace ", style="dim")
            header.append(_clean(trace_id), style="bold")
            if first[SERVICE] is not None:
                header.append(f" {_clean(first[SERVICE], 256)}", style="cyan")
            clock = _clock(first[TS])
            if clock:
                header.append(f" {clock}", style="dim")
            lines.append(header)
            roots = sorted(_forest(trace_rows), key=lambda n: n.ts)
            for i, node in enumerate(roots):
                self._render(Text, lines, node, i == len(roots) - 1)
        console = self._console(tty)
        with console.capture() as capture:
            console.print(Text("\n").join(lines), soft_wrap=True)
        return str(capture.get())

    def _render(
        self,
        Text: Any,
        lines: list[Any],
        root: _Node,
        last: bool | None,
        *,
        with_time: bool = False,
    ) -> None:
        # An explicit stack, not recursion: a deeply recursive program nests spans past the
        # interpreter's recursion limit. last=None: a line outside any tree, drawn without guides.
        stack: list[tuple[_Node, str, bool | None]] = [(root, "", last)]
        while stack:
            node, prefix, is_last = stack.pop()
            if is_last is None:
                branch = cont = ""
            else:
                branch = prefix + ("└─ " if is_last else "├─ ")
                cont = prefix + ("   " if is_last else "│  ")
            try:
                line, extra = self._line(Text, node.row, with_time)
            except Exception as exc:  # a value that defeats every fallback: show the row raw
                line = Text(f"<unrenderable row: {type(exc).__qualname__}> {_clean(node.row)}")
                extra = []
            guide = Text()
            guide.append(branch, style="dim")
            guide.append_text(line)
            lines.append(guide)
            children = sorted(node.children, key=lambda n: n.ts)
            # Continuation lines sit under this node's guide, before its children.
            pad = cont + ("│  " if children else "   ") if is_last is not None else "    "
            for text in extra:
                lines.append(Text(pad + text, style="dim"))
            count = len(children)
            stack.extend(
                (child, cont, i == count - 1) for i, child in reversed(list(enumerate(children)))
            )

    def _line(self, Text: Any, row: tuple[Any, ...], with_time: bool) -> tuple[Any, list[str]]:
        kind = row[KIND]
        line = Text()
        if kind in _SPAN_KINDS:
            line.append(_clean(row[NAME] if row[NAME] is not None else "?", 1024), style="bold")
            if kind == Kind.SPAN_START:
                line.append(" … running", style="yellow")
            else:
                if row[DURATION_NS] is not None:
                    line.append(f" {format_duration(row[DURATION_NS])}", style="cyan")
                status = row[STATUS]
                if status == Status.OK:
                    line.append(" ✓", style="green")
                elif status == Status.ERROR:
                    line.append(" ✗", style="bold red")
        else:
            if with_time:
                clock = _clock(row[TS])
                if clock:
                    line.append(f"{clock} ", style="dim")
            level = row[LEVEL]
            style = _LEVEL_STYLES.get(level, "") if isinstance(level, int) else ""
            line.append(_level_name(level).upper(), style=style)
            if row[NAME] is not None:
                line.append(f" {_clean(row[NAME], 256)}", style="dim")
        # Multi-line text keeps its first line here; the rest goes under it, indented.
        message = _clean(row[MESSAGE]).split("\n") if row[MESSAGE] is not None else [""]
        if message[0]:
            line.append(f" {message[0]}")
        extra = message[1:]
        if row[STATUS] == Status.ERROR and row[STATUS_MESSAGE] is not None:
            line.append(f" {_clean(row[STATUS_MESSAGE]).split(chr(10))[0]}", style="red")
        if row[ERROR_TYPE] is not None or row[ERROR_MESSAGE] is not None:
            parts = [_clean(v) for v in (row[ERROR_TYPE], row[ERROR_MESSAGE]) if v is not None]
            error = ": ".join(parts).split("\n")
            line.append(f" {error[0]}", style="red")
            extra.extend(error[1:])
        if self.show_attrs and row[ATTRS] is not None:
            pairs = _attr_pairs(row[ATTRS])
            if pairs:
                line.append(" " + " ".join(pairs).replace("\n", " "), style="dim")
        # A failed span's stack repeats in every span it unwound through; a log shows it once.
        if kind == Kind.LOG and row[STACK_TRACE] is not None:
            extra.extend(_clean(row[STACK_TRACE], _TEXT_LIMIT * 4).rstrip("\n").split("\n"))
        return line, extra


def _clock(ts: Any) -> str:
    # Local wall-clock time: a developer reads it against their own clock.
    if not isinstance(ts, int) or isinstance(ts, bool):
        return ""
    try:
        moment = dt.datetime.fromtimestamp(ts // 1000 / 1e6)
    except (OverflowError, ValueError, OSError):
        return ""
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # a closed file raises ValueError; a stream-like object may lack isatty
        return False
