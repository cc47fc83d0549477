"""Attribute limits: a record keeps its first attributes up to the limit, the rest are counted on
the record and in metrics() and exported as OpenTelemetry's dropped_attributes_count; the limits
take OpenTelemetry's environment variables."""

from __future__ import annotations

import orjson
import pytest

import atrace
from atrace._formats import otlp
from atrace.config import from_environment
from atrace.testing import MemorySink


async def test_a_record_keeps_its_first_attributes(memory_sink: MemorySink) -> None:
    atrace.configure(service="svc", sink=memory_sink, flush_interval=3600, max_attributes=3)
    atrace.info("many", a=1, b=2, c=3, d=4, e=5)
    atrace.info("few", a=1, b=2)
    with atrace.span("wide", **{f"k{i}": i for i in range(10)}):
        pass
    assert await atrace.aflush()
    many, few = memory_sink.logs()
    assert many["attrs"] == {"a": 1, "b": 2, "c": 3}
    assert many["otlp"] == {"dropped_attributes": 2}
    assert few["attrs"] == {"a": 1, "b": 2} and few["otlp"] is None
    (span,) = memory_sink.spans()
    assert span["attrs"] == {"k0": 0, "k1": 1, "k2": 2}
    assert span["otlp"] == {"dropped_attributes": 7}
    assert atrace.metrics().dropped_attributes == 9
    # OTLP says so too, as OpenTelemetry's SDKs do.
    (sp,) = [s for rs in otlp.traces_request(memory_sink.rows).resource_spans
             for ss in rs.scope_spans for s in ss.spans]  # fmt: skip
    assert sp.dropped_attributes_count == 7 and len(sp.attributes) >= 3
    logs = [r for rl in otlp.logs_request(memory_sink.rows).resource_logs
            for sl in rl.scope_logs for r in sl.log_records]  # fmt: skip
    assert [r.dropped_attributes_count for r in logs] == [2, 0]
    as_json = orjson.loads(otlp.logs_json(memory_sink.rows))
    records = as_json["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert records[0]["droppedAttributesCount"] == 2 and "droppedAttributesCount" not in records[1]


def test_opentelemetry_variables() -> None:
    """OTEL_ATTRIBUTE_COUNT_LIMIT and OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT set the limits when
    atrace's own are unset; ATRACE_MAX_ATTRIBUTES wins."""
    env = {"OTEL_ATTRIBUTE_COUNT_LIMIT": "16", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "256"}
    assert from_environment(env) == {"max_attributes": 16, "max_value_length": 256}
    assert from_environment({**env, "ATRACE_MAX_ATTRIBUTES": "8"})["max_attributes"] == 8
    assert atrace.config.Config().max_attributes == 128
    with pytest.raises(atrace.ConfigError, match="max_attributes"):
        atrace.config.Config(max_attributes=0)
    with pytest.raises(atrace.ConfigError, match="OTEL_ATTRIBUTE_COUNT_LIMIT"):
        from_environment({"OTEL_ATTRIBUTE_COUNT_LIMIT": "many"})
