"""What atrace and OTLP agree on, both ways: attribute keys, span kinds, severities."""

from __future__ import annotations

import logging
from typing import Any

from ..._records import Level
from ...errors import MissingExtraError
from ..resources import OWN_SCOPE

try:
    # The other OTLP modules import these from here, so a missing extra is reported once.
    from google.protobuf.message import DecodeError as DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest as ExportLogsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest as ExportTraceServiceRequest,
    )
except ImportError:  # pragma: no cover - depends on the installed extras
    raise MissingExtraError("opentelemetry-proto", "otlp") from None

SCOPE_NAME = OWN_SCOPE

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1

# Nesting of array / kvlist values kept before the rest is replaced by a marker.
MAX_ANY_DEPTH = 32

# Resource attributes that have a column of their own.
SERVICE_KEY = "service.name"
ENV_KEYS = ("deployment.environment.name", "deployment.environment")
HOST_KEY = "host.name"
PID_KEY = "process.pid"
DEFAULT_SERVICE = "unknown_service"

KIND_KEY = "span.kind"
OTLP_KIND_NAMES = {2: "server", 3: "client", 4: "producer", 5: "consumer"}
KIND_NUMBERS = {v: k for k, v in OTLP_KIND_NAMES.items()}
SPAN_KIND_UNSPECIFIED = 0
SPAN_KIND_INTERNAL = 1
# The low byte of a span's or log record's ``flags``: the W3C trace flags (OTLP keeps whether
# the parent is remote in the bits above).
W3C_FLAGS_MASK = 0xFF
# OTLP's status codes (they happen to match atrace's Status; each side names its own).
STATUS_OK = 1
OTLP_STATUS_ERROR = 2

LOGGER_KEY = "logger.name"
EXC_TYPE, EXC_MESSAGE, EXC_STACK = "exception.type", "exception.message", "exception.stacktrace"
FILE_KEYS = ("code.filepath", "code.file.path")
LINE_KEYS = ("code.lineno", "code.line.number")

# atrace levels and OTLP severity numbers (the first of each range: DEBUG 5, INFO 9, ...).
_SEVERITIES = (
    (Level.DEBUG.value, 5),
    (Level.INFO.value, 9),
    (Level.WARNING.value, 13),
    (Level.ERROR.value, 17),
    (Level.CRITICAL.value, 21),
)
# Severity texts by prefix, for a record whose number is unspecified.
_TEXT_LEVELS = (
    ("TRACE", Level.DEBUG.value),
    ("DEBUG", Level.DEBUG.value),
    ("INFO", Level.INFO.value),
    ("WARN", Level.WARNING.value),
    ("ERR", Level.ERROR.value),
    ("FATAL", Level.CRITICAL.value),
    ("CRIT", Level.CRITICAL.value),
)


# ---- levels ---------------------------------------------------------------------------------


def severity_number(level: Any) -> int:
    """The OTLP severity number for an atrace level (10→5 … 50→21; others to the nearest).

    A level halfway between two takes the more severe one, so that nothing is understated.
    """
    if not isinstance(level, (int, float)) or isinstance(level, bool):
        return 9
    best = min(_SEVERITIES, key=lambda pair: (abs(level - pair[0]), -pair[0]))
    return best[1]


def level_from_severity(number: int, text: str = "") -> int:
    """The atrace level for an OTLP severity number (its text when the number is unspecified)."""
    if number <= 0:
        upper = text.strip().upper()
        for prefix, level in _TEXT_LEVELS:
            if upper.startswith(prefix):
                return level
        return Level.INFO.value
    if number <= 8:
        return Level.DEBUG.value  # TRACE and DEBUG: atrace has nothing below debug
    if number >= 21:
        return Level.CRITICAL.value
    return (number - 1) // 4 * 10  # 9-12 → 20, 13-16 → 30, 17-20 → 40


def logging_severity_text(level: Any) -> str:
    # logging's own text ("Level 25" for an unnamed number), as Python's OpenTelemetry logging
    # handler sends it: the severity text is the source's name, not atrace's.
    name = logging.getLevelName(level) if isinstance(level, int) else None
    return name if isinstance(name, str) else "INFO"
