"""atrace: asyncio-first tracing and structured logging that lands in PostgreSQL."""

from __future__ import annotations

from ._emit.context import SpanContext as SpanContext
from ._emit.context import Thread as Thread
from ._emit.context import current_span as current_span
from ._emit.context import current_span_id as current_span_id
from ._emit.context import current_trace_id as current_trace_id
from ._emit.context import run_in_executor as run_in_executor
from ._emit.context import trace_context as trace_context
from ._emit.context import wrap as wrap
from ._emit.instrument import instrument_logging as instrument_logging
from ._emit.instrument import instrument_threads as instrument_threads
from ._emit.instrument import uninstrument_logging as uninstrument_logging
from ._emit.instrument import uninstrument_threads as uninstrument_threads
from ._emit.log import amit as amit
from ._emit.log import critical as critical
from ._emit.log import debug as debug
from ._emit.log import error as error
from ._emit.log import exception as exception
from ._emit.log import fatal as fatal
from ._emit.log import info as info
from ._emit.log import warn as warn
from ._emit.log import warning as warning
from ._emit.span import Span as Span
from ._emit.span import span as span
from ._emit.span import traced as traced
from ._emit.tracecontext import extract as extract
from ._emit.tracecontext import format_traceparent as format_traceparent
from ._emit.tracecontext import inject as inject
from ._emit.tracecontext import parse_traceparent as parse_traceparent
from ._emit.tracer import Tracer as Tracer
from ._pipeline.metrics import Metrics as Metrics
from ._pipeline.state import aflush as aflush
from ._pipeline.state import ashutdown as ashutdown
from ._pipeline.state import configure as configure
from ._pipeline.state import flush as flush
from ._pipeline.state import get_config as get_config
from ._pipeline.state import initialize as initialize
from ._pipeline.state import metrics as metrics
from ._pipeline.state import reset as reset
from ._pipeline.state import shutdown as shutdown
from ._records import SpanKind as SpanKind
from ._version import __version__ as __version__
from .config import Config as Config
from .errors import AtraceError as AtraceError
from .errors import ConfigError as ConfigError
from .errors import SinkError as SinkError

__all__ = (
    "AsyncClient",
    "AtraceError",
    "Client",
    "CollectorError",
    "Config",
    "ConfigError",
    "Metrics",
    "SinkError",
    "Span",
    "SpanContext",
    "SpanKind",
    "Thread",
    "Tracer",
    "__version__",
    "aflush",
    "amit",
    "ashutdown",
    "configure",
    "critical",
    "current_span",
    "current_span_id",
    "current_trace_id",
    "debug",
    "error",
    "exception",
    "extract",
    "fatal",
    "flush",
    "format_traceparent",
    "get_config",
    "info",
    "initialize",
    "inject",
    "instrument_logging",
    "instrument_threads",
    "metrics",
    "parse_traceparent",
    "reset",
    "run_in_executor",
    "shutdown",
    "span",
    "trace_context",
    "traced",
    "uninstrument_logging",
    "uninstrument_threads",
    "warn",
    "warning",
    "wrap",
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .client import AsyncClient as AsyncClient
    from .client import Client as Client
    from .client import CollectorError as CollectorError

# The query clients load on first use: most programs never read back, and `import atrace` stays
# light.
_LAZY = {"AsyncClient": "client", "Client": "client", "CollectorError": "client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'atrace' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
