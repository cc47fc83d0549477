"""The collector's own metrics, rendered in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

__all__ = ("CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; a request slower than the last bound counts only in +Inf.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds


class Metrics:
    """Counters and a latency histogram for one collector process.

    - ``atrace_collector_requests_total{route,method,status}``
    - ``atrace_collector_request_duration_seconds{route}`` (histogram)
    - ``atrace_collector_records_ingested_total{endpoint}``: rows committed, by endpoint kind
      (``ingest``, ``otlp_traces``, ``otlp_logs``)
    - ``atrace_collector_batches_duplicate_total{endpoint}``: requests whose batch was stored
      before (answered, nothing written)
    - ``atrace_collector_errors_total{reason}``: refused or failed requests by reason
    - ``atrace_collector_connections_closed_total{cause}``: connections the collector closed to
      protect itself (``max_connections``, ``per_address``, ``header_timeout``)
    - ``atrace_collector_refused_total{cause}``: requests refused at one of the collector's
      limits, by the limit's name (``max_body``, ``ingest_rate``, ``max_inflight_bytes``,
      ``body_timeout``, ...; ``database`` when PostgreSQL failed)
    - gauges: ``atrace_collector_inflight_requests``, ``atrace_collector_inflight_records``,
      ``atrace_collector_inflight_bytes``, ``atrace_collector_inflight_queries``,
      ``atrace_collector_connections_open``
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._records: dict[str, int] = {}
        self._duplicates: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._closed: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._counters: dict[str, tuple[str, str | None, Callable[[], dict[str, float]]]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (route, method, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = _Histogram()
        histogram.observe(seconds)

    def records(self, endpoint: str, n: int) -> None:
        """Count ``n`` rows committed through ``endpoint``."""
        self._records[endpoint] = self._records.get(endpoint, 0) + n

    def duplicate(self, endpoint: str) -> None:
        """Count a request whose batch was already stored."""
        self._duplicates[endpoint] = self._duplicates.get(endpoint, 0) + 1

    def error(self, reason: str) -> None:
        """Count a refused or failed request (``unauthorized``, ``too_large``, ...)."""
        self._errors[reason] = self._errors.get(reason, 0) + 1

    def closed(self, cause: str) -> None:
        """Count a connection closed by the collector to protect itself, by ``cause``."""
        self._closed[cause] = self._closed.get(cause, 0) + 1

    def refused(self, cause: str) -> None:
        """Count a request refused at the collector's limit named ``cause``."""
        self._refused[cause] = self._refused.get(cause, 0) + 1

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Export ``read()`` as the gauge ``atrace_collector_<name>``."""
        self._gauges[name] = read

    def counter(
        self, name: str, helptext: str, label: str | None, read: Callable[[], dict[str, float]]
    ) -> None:
        """Export ``read()`` (label value -> count) as the counter ``atrace_collector_<name>``;
        with ``label`` None, ``read()`` holds one value."""
        self._counters[name] = (helptext, label, read)

    def value(self, family: str, **labels: str) -> float:
        """One series' current value (for tests and the benchmark); 0 when never counted."""
        if family == "requests":
            key = (labels["route"], labels["method"], labels["status"])
            return self._requests.get(key, 0)
        if family in self._gauges:
            return self._gauges[family]()
        table = {
            "records": self._records,
            "duplicates": self._duplicates,
            "errors": self._errors,
            "closed": self._closed,
            "refused": self._refused,
        }
        values = table[family]
        (label,) = labels.values()
        return values.get(label, 0)

    def render(self) -> str:
        """The whole exposition text."""
        out: list[str] = []
        family = "atrace_collector_requests_total"
        out.append(f"# HELP {family} HTTP requests answered, by route, method and status.")
        out.append(f"# TYPE {family} counter")
        for (route, method, status), n in sorted(self._requests.items()):
            labels = (("route", route), ("method", method), ("status", status))
            out.append(f"{family}{_labels(labels)} {n}")
        family = "atrace_collector_request_duration_seconds"
        out.append(f"# HELP {family} Time from request to response, by route.")
        out.append(f"# TYPE {family} histogram")
        for route, histogram in sorted(self._latency.items()):
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, None), histogram.buckets, strict=True):
                running += n
                le = "+Inf" if bound is None else _number(bound)
                out.append(f"{family}_bucket{_labels((('route', route), ('le', le)))} {running}")
            route_label = _labels((("route", route),))
            out.append(f"{family}_sum{route_label} {_number(histogram.sum)}")
            out.append(f"{family}_count{route_label} {histogram.count}")
        for family, helptext, label, values in (
            (
                "atrace_collector_records_ingested_total",
                "Records committed to PostgreSQL, by endpoint.",
                "endpoint",
                self._records,
            ),
            (
                "atrace_collector_batches_duplicate_total",
                "Requests whose batch was stored before: nothing written twice.",
                "endpoint",
                self._duplicates,
            ),
            (
                "atrace_collector_errors_total",
                "Requests refused or failed, by reason.",
                "reason",
                self._errors,
            ),
            (
                "atrace_collector_connections_closed_total",
                "Connections closed by the collector to protect itself, by cause.",
                "cause",
                self._closed,
            ),
            (
                "atrace_collector_refused_total",
                "Requests refused at one of the collector's limits, by the limit's name.",
                "cause",
                self._refused,
            ),
        ):
            out.append(f"# HELP {family} {helptext}")
            out.append(f"# TYPE {family} counter")
            for value, n in sorted(values.items()):
                out.append(f"{family}{_labels(((label, value),))} {n}")
        for name, (helptext, label_name, read_all) in sorted(self._counters.items()):
            family = f"atrace_collector_{name}"
            out.append(f"# HELP {family} {helptext}")
            out.append(f"# TYPE {family} counter")
            for value, amount in sorted(read_all().items()):
                pairs = () if label_name is None else ((label_name, value),)
                out.append(f"{family}{_labels(pairs)} {_number(amount)}")
        for name, read in sorted(self._gauges.items()):
            family = f"atrace_collector_{name}"
            out.append(f"# TYPE {family} gauge")
            out.append(f"{family} {_number(read())}")
        return "\n".join(out) + "\n"
