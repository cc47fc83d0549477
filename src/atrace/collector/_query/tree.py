"""One trace's records as a tree: spans under their parents, logs under their spans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._records import KIND_NAMES, Kind, Level, Status

# Records come as record_json gives them, kinds by name.
_LOG = KIND_NAMES[Kind.LOG]
_SPAN_START = KIND_NAMES[Kind.SPAN_START]
# Deeper spans hang from the root (marked): JSON encoders refuse very deep nesting, and no
# reader follows a tree 100 levels down.
MAX_DEPTH = 100
_SPAN_FIELDS = (
    "span_id",
    "parent_id",
    "name",
    "service",
    "environment",
    "host",
    "pid",
    "message",
    "attrs",
    "error_type",
    "error_message",
    "stack_trace",
    "location",
    "span_kind",
    "trace_state",
    "trace_flags",
    "status_message",
    "links",
    "otlp",
    "resource_id",
)


def _span_node(rec: dict[str, Any]) -> dict[str, Any]:
    node = {k: rec.get(k) for k in _SPAN_FIELDS}
    node.update(
        type="span",
        start=rec["ts"],
        end=None,
        duration_ns=None,
        elapsed_ns=None,
        status=rec["status"],
        level=rec["level"],
        in_flight=True,
        orphan=False,
        logs=[],
        children=[],
    )
    return node


def _close_span(node: dict[str, Any], rec: dict[str, Any]) -> None:
    # The end row or a complete span carries the final status, attributes, error and duration.
    for k in _SPAN_FIELDS:
        value = rec.get(k)
        if value is not None and value != {}:
            node[k] = value
    duration = rec["duration_ns"] or 0
    node.update(
        start=rec["ts"],
        duration_ns=duration,
        end=rec["ts"] + duration,
        status=rec["status"],
        level=rec["level"],
        in_flight=False,
    )


def build_tree(records: Sequence[dict[str, Any]], *, now: int) -> dict[str, Any]:
    """A trace's records (as :func:`record_json` gives them, oldest first) as a tree.

    A span start and its end row become one span; a start without its end is
    ``in_flight``, with ``elapsed_ns`` up to ``now``. Logs hang under their span (``logs``),
    spans under their parent (``children``), both oldest first. A span whose parent is not in
    the data, a log whose span is not, and a span in a parent cycle sit at the root with
    ``orphan`` set.
    """
    spans: dict[str, dict[str, Any]] = {}
    logs: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        kind = rec["kind"]
        if kind == _LOG:
            log = dict(rec)
            log.update(type="log", orphan=False)
            logs.append(log)
            continue
        key = rec["span_id"] or f"row{i}"
        node = spans.get(key)
        if kind == _SPAN_START:
            if node is None:
                spans[key] = _span_node(rec)
            continue
        if node is None:
            node = spans[key] = _span_node(rec)
        _close_span(node, rec)
    parents = _parents(spans)
    roots: list[dict[str, Any]] = []
    for key, node in spans.items():
        parent = parents.get(key)
        if parent is None:
            node["orphan"] = node["orphan"] or node["parent_id"] is not None
            roots.append(node)
        else:
            spans[parent]["children"].append(node)
    root_logs: list[dict[str, Any]] = []
    for log in logs:
        owner = spans.get(log["span_id"]) if log["span_id"] else None
        if owner is None:
            log["orphan"] = log["span_id"] is not None
            root_logs.append(log)
        else:
            owner["logs"].append(log)
    for node in spans.values():
        node["children"].sort(key=_start)
        if node["in_flight"]:
            node["elapsed_ns"] = max(0, now - node["start"])
    roots.sort(key=_start)
    roots.extend(_flatten_deep(roots))
    return _summary(records, spans, roots, root_logs, now)


def _start(node: dict[str, Any]) -> int:
    return int(node["start"])


def _parents(spans: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each span's parent key when the parent is present, with every cycle broken once."""
    parents = {
        k: n["parent_id"]
        for k, n in spans.items()
        if n["parent_id"] is not None and n["parent_id"] in spans and n["parent_id"] != k
    }
    for k, n in spans.items():
        if n["parent_id"] == k:
            n["orphan"] = True
    state: dict[str, int] = {}  # absent: not seen, 1: on the current path, 2: settled
    for start in spans:
        path = []
        cur: str | None = start
        while cur is not None and cur not in state:
            state[cur] = 1
            path.append(cur)
            cur = parents.get(cur)
        if cur is not None and state[cur] == 1:
            # A parent cycle: cut it at the span where the walk came back round.
            del parents[cur]
            spans[cur]["orphan"] = True
        for k in path:
            state[k] = 2
    return parents


def _flatten_deep(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detach spans deeper than MAX_DEPTH; they are returned to hang from the root, marked."""
    moved: list[dict[str, Any]] = []
    stack = [(node, 0) for node in roots]
    while stack:
        node, depth = stack.pop()
        kept = []
        for child in node["children"]:
            if depth + 1 >= MAX_DEPTH:
                child["too_deep"] = True
                moved.append(child)
                stack.append((child, 0))
            else:
                kept.append(child)
                stack.append((child, depth + 1))
        node["children"] = kept
    return moved


def _summary(
    records: Sequence[dict[str, Any]],
    spans: dict[str, dict[str, Any]],
    roots: list[dict[str, Any]],
    root_logs: list[dict[str, Any]],
    now: int,
) -> dict[str, Any]:
    start = min(r["ts"] for r in records)
    end = start
    in_flight = False
    for r in records:
        end = max(end, r["ts"] + (r["duration_ns"] or 0))
    for node in spans.values():
        if node["in_flight"]:
            in_flight = True
            end = max(end, now)
    return {
        "trace_id": records[0]["trace_id"],
        "start": start,
        "end": end,
        "duration_ns": end - start,
        "in_flight": in_flight,
        "span_count": len(spans),
        "log_count": sum(1 for r in records if r["kind"] == _LOG),
        "error_count": sum(1 for n in spans.values() if n["status"] == Status.ERROR)
        + sum(1 for r in records if r["kind"] == _LOG and r["level"] >= Level.ERROR),
        "services": sorted({r["service"] for r in records}),
        "spans": roots,
        "logs": root_logs,
    }
