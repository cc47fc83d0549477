"""A process's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``configure(attributes=...)``) is stored
once and named by every record, through each sink: PostgreSQL directly, the collector over HTTP,
and OTLP export, where it is the ``Resource`` of the request, not a span attribute."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

import atrace
from _collector import CollectorServer, collector_server  # noqa: F401
from atrace._formats import otlp
from atrace._formats.resources import known, known_all
from atrace._records import COLUMNS
from atrace.config import from_environment
from atrace.sinks.http import HttpSink
from atrace.testing import MemorySink


def _attrs_of(kvs: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


async def test_otel_resource_attributes_become_the_resource_over_otlp() -> None:
    """OTEL_RESOURCE_ATTRIBUTES go out as the OTLP Resource (with the service, environment,
    host and pid), under atrace's scope; the spans' attributes are their own. A tracer of
    another service in the process keeps its own service.name."""
    sink = MemorySink()
    settings = from_environment(
        {
            "OTEL_SERVICE_NAME": "checkout",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,k8s.pod.name=web-7",
        }
    )
    atrace.configure(**settings, sink=sink, flush_interval=3600)
    with atrace.span("charge", amount=3):
        pass
    with atrace.Tracer("billing").span("invoice"):
        pass
    await atrace.aflush()
    request = otlp.traces_request(sink.rows, known_all())
    by_span = {
        sp.name: (rs, ss, sp)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for sp in ss.spans
    }
    rs, ss, sp = by_span["charge"]
    resource = _attrs_of(rs.resource.attributes)
    assert resource["service.name"] == "checkout"
    assert resource["deployment.environment.name"] == "prod"
    assert resource["k8s.pod.name"] == "web-7"
    assert resource["process.pid"] == atrace.get_config().pid
    assert _attrs_of(sp.attributes).keys() >= {"amount"}
    assert "k8s.pod.name" not in _attrs_of(sp.attributes)
    assert (ss.scope.name, ss.scope.version) == ("atrace", atrace.__version__)
    rs, _, _ = by_span["invoice"]
    billing = _attrs_of(rs.resource.attributes)
    assert billing["service.name"] == "billing" and billing["k8s.pod.name"] == "web-7"
    await atrace.ashutdown()


async def test_postgres_stores_the_resource_once(pg_schema: tuple[str, str]) -> None:
    """Each record names the resource; its document is written once, with the first batch."""
    dsn, schema = pg_schema
    atrace.configure(
        service="shop",
        sink=dsn,
        schema=schema,
        attributes={"team": "payments"},
        flush_interval=3600,
    )
    atrace.info("first", n=1)
    assert await atrace.aflush(timeout=30)
    atrace.info("second")
    assert await atrace.aflush(timeout=30)
    await atrace.ashutdown()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT resource_id, attrs FROM {schema}.records ORDER BY ts")
        docs = await conn.fetch(f"SELECT project, resource_id, doc FROM {schema}.resources")
    finally:
        await conn.close()
    assert [orjson.loads(r["attrs"]) if r["attrs"] else None for r in rows] == [{"n": 1}, None]
    (rid,) = {r["resource_id"] for r in rows}
    assert [(d["project"], d["resource_id"]) for d in docs] == [("default", rid)]
    doc = orjson.loads(docs[0]["doc"])
    assert doc["resource"]["attrs"]["team"] == "payments"
    assert doc["resource"]["attrs"]["service.name"] == "shop"


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
async def test_the_collector_stores_the_resource_sent_along(
    collector_server: CollectorServer,  # noqa: F811
    fmt: str,
) -> None:
    """The HTTP sink sends the resource with the batches that name it; the collector stores it
    under the key's project, and the query API answers carry it."""
    key = await collector_server.create_key("res")
    atrace.configure(
        service="shop",
        sink=HttpSink(collector_server.url, api_key=key, format=fmt),
        attributes={"team": "payments", "blob": b"\x01\x02"},
        flush_interval=3600,
    )
    atrace.info("sent", n=1)
    assert await atrace.aflush(timeout=30)
    await atrace.ashutdown()
    (record,) = await collector_server.records("res")
    assert orjson.loads(record["attrs"]) == {"n": 1}
    rid = record["resource_id"]
    found = await collector_server.request("GET", "/v1/search?q=sent", key=key)
    answer = found.json()
    (rec,) = answer["records"]
    doc = answer["resources"][rec["resource_id"]]
    assert doc == orjson.loads(known([rid])[rid])
    assert doc["resource"]["attrs"]["team"] == "payments"
    # bytes are bytes again on the way out (the document says so)
    assert doc["types"] == {"/resource/attrs/blob": "bytes"}
    stored = await collector_server.fetch(
        "SELECT resource_id, doc FROM {schema}.resources WHERE project = 'res'"
    )
    rows = await collector_server.fetch(
        f"SELECT {', '.join(COLUMNS)} FROM {{schema}}.records WHERE project = 'res'"
    )
    request = otlp.logs_request(
        [tuple(r) for r in rows], {r["resource_id"]: r["doc"] for r in stored}
    )
    (rl,) = request.resource_logs
    resource = _attrs_of(rl.resource.attributes)
    assert resource["blob"] == b"\x01\x02" and resource["team"] == "payments"
    assert resource["service.name"] == "shop"
