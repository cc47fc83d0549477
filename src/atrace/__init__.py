"""atrace: asyncio-first tracing and structured logging that lands in PostgreSQL."""

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .config import Config as Config
from .context import SpanContext as SpanContext
from .context import Thread as Thread
from .context import current_span as current_span
from .context import current_span_id as current_span_id
from .context import current_trace_id as current_trace_id
from .context import extract as extract
from .context import format_traceparent as format_traceparent
from .context import inject as inject
from .context import parse_traceparent as parse_traceparent
from .context import run_in_executor as run_in_executor
from .context import trace_context as trace_context
from .context import wrap as wrap
from .errors import AtraceError as AtraceError
from .errors import ConfigError as ConfigError
from .errors import SinkError as SinkError
from .instrument import instrument_logging as instrument_logging
from .instrument import instrument_threads as instrument_threads
from .instrument import uninstrument_logging as uninstrument_logging
from .instrument import uninstrument_threads as uninstrument_threads
from .log import amit as amit
from .log import critical as critical
from .log import debug as debug
from .log import error as error
from .log import exception as exception
from .log import fatal as fatal
from .log import info as info
from .log import warn as warn
from .log import warning as warning
from .pipeline import Metrics as Metrics
from .pipeline import aflush as aflush
from .pipeline import ashutdown as ashutdown
from .pipeline import configure as configure
from .pipeline import flush as flush
from .pipeline import get_config as get_config
from .pipeline import initialize as initialize
from .pipeline import metrics as metrics
from .pipeline import reset as reset
from .pipeline import shutdown as shutdown
from .span import Span as Span
from .span import span as span
from .span import traced as traced
from .tracer import Tracer as Tracer

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

if TYPE_CHECKING:
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
