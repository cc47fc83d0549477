"""Error fingerprints: one stable hash for every occurrence of "the same" error.

Two errors share a fingerprint when they have the same type, the same message once the parts
that vary per occurrence are masked (quoted values, UUIDs, timestamps, hex, ids, numbers), and
the same top frames (file and function, never line numbers, so an edit elsewhere in a file does
not split a group). Python tracebacks ("most recent call last") have their top frames at the
end; Java and JavaScript stacks (``at …`` lines) at the start.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ("TOP_FRAMES", "fingerprint", "normalize_message", "top_frames")

# How many frames nearest the raise take part in the fingerprint.
TOP_FRAMES = 5
# Longer messages are cut before masking: their tails rarely tell groups apart and regexes over
# megabyte messages would make grouping slow.
_MAX_MESSAGE = 2048

# Order matters: a UUID or a timestamp must be masked before its digits are taken for numbers,
# and quoted text (often a user's value) before anything inside it is looked at.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'[^'\n]{0,256}'|\"[^\"\n]{0,256}\""), "<str>"),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
            r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?\b"
        ),
        "<ts>",
    ),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<ts>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "<hex>"),
    # Long hex runs with at least one digit: hashes, object ids, W3C trace and span ids.
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    # Tokens mixing letters and digits (order ids like "ord_8Kd93jXq", "user-42a"): ids.
    # A letter before a digit: "1500ms" stays a number with a unit.
    (re.compile(r"\b(?=[A-Za-z0-9_-]*[A-Za-z][A-Za-z_-]*\d)[A-Za-z0-9_-]{6,}\b"), "<id>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)

# Python: '  File "/app/shop/pay.py", line 42, in charge'
_PY_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<func>.+?)\s*$', re.M)
# Java: 'at com.shop.Pay.charge(Pay.java:42)'; JavaScript: 'at charge (/app/pay.js:42:7)' or
# 'at /app/pay.js:42:7'.
_AT_FRAME = re.compile(r"^\s*at (?P<rest>.+?)\s*$", re.M)
_AT_CALL = re.compile(r"^(?P<func>.+?) \((?P<file>.+?)\)$|^(?P<func2>[\w$.<>/]+)\((?P<file2>.*)\)$")
_LINE_SUFFIX = re.compile(r"(?::\d+)+$")
# Chained Python exceptions print the cause first; the last traceback is the one raised.
_CHAIN = re.compile(
    r"^(?:During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:)\s*$",
    re.M,
)


def normalize_message(message: str | None) -> str:
    """The message with the parts that vary per occurrence masked (``<n>``, ``<uuid>``, …)."""
    if not message:
        return ""
    text = message[:_MAX_MESSAGE]
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return text.strip()


def _short_file(path: str) -> str:
    # Installs differ in their prefix (venvs, release directories): keep what names the module.
    path = path.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        cut = path.rfind(marker)
        if cut >= 0:
            return path[cut + len(marker) :]
    parts = [p for p in path.split("/") if p]
    return "/".join(parts[-2:])


def top_frames(stack_trace: str | None, count: int = TOP_FRAMES) -> list[str]:
    """``file:function`` of the ``count`` frames nearest the raise, innermost first."""
    if not stack_trace:
        return []
    segments = _CHAIN.split(stack_trace)
    last = segments[-1]
    py = [(m["file"], m["func"]) for m in _PY_FRAME.finditer(last)]
    if py:
        return [f"{_short_file(f)}:{fn}" for f, fn in reversed(py[-count:])]
    frames: list[str] = []
    for m in _AT_FRAME.finditer(stack_trace):
        rest = m["rest"]
        call = _AT_CALL.match(rest)
        if call is not None:
            func = call["func"] or call["func2"] or ""
            file = call["file"] or call["file2"] or ""
        else:
            func, file = "", rest
        frames.append(f"{_short_file(_LINE_SUFFIX.sub('', file))}:{func}")
        if len(frames) == count:
            break
    return frames


def fingerprint(error_type: str | None, message: str | None, stack_trace: str | None) -> str:
    """SHA-256 hex over the error type, the normalised message and the top frames."""
    parts = [error_type or "", normalize_message(message), *top_frames(stack_trace)]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
