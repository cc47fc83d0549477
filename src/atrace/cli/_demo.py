"""``atrace demo``: a small async service workload, written to PostgreSQL and read back as trees."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import atrace

from .._postgres.session import connection_init
from .._records import COLUMNS, KIND, LEVEL, TRACE_ID, Batch, Kind, Level

__all__ = ("run_demo",)


# The workload stands for a user's service: its logs, spans and errors are named after it, not
# after the module of atrace that happens to hold it.
SERVICE_MODULE = "shop"


class PaymentDeclined(Exception):
    """The demo's failing request."""


PaymentDeclined.__module__ = SERVICE_MODULE


@atrace.traced("load cart")
async def load_cart(order_id: int) -> list[dict[str, Any]]:
    await asyncio.sleep(0.002)
    items = [{"sku": f"SKU-{order_id}-{n}", "qty": n + 1} for n in range(order_id % 3 + 1)]
    atrace.debug("cart loaded", module=SERVICE_MODULE, items=len(items))
    return items


@atrace.traced("charge card")
async def charge(order_id: int, amount: float) -> str:
    await asyncio.sleep(0.003)
    atrace.debug("authorising", module=SERVICE_MODULE, amount=amount)
    if order_id == 4:
        raise PaymentDeclined(f"card declined for order {order_id}")
    return f"ch_{order_id:06d}"


async def handle_request(order_id: int) -> str:
    async with atrace.span("POST /checkout", kind="server", order_id=order_id, method="POST") as sp:
        items = await load_cart(order_id)
        amount = round(sum(i["qty"] for i in items) * 9.99, 2)
        sp.set(amount=amount)
        if order_id == 2:
            # A handled error: recorded on the span, the request still succeeds.
            try:
                raise TimeoutError("inventory service slow, using cached stock")
            except TimeoutError as exc:
                atrace.warning("inventory fallback", module=SERVICE_MODULE, exc_info=True)
                sp.record_exception(exc, failed=False)
        async with atrace.span("reserve stock", items=len(items)):
            await asyncio.gather(*(asyncio.sleep(0.001) for _ in items))
        charge_id = await charge(order_id, amount)
        atrace.info("order placed", module=SERVICE_MODULE, order_id=order_id, charge_id=charge_id)
        return charge_id


async def workload(requests: int) -> list[str]:
    """Run concurrent requests; return the trace ids they produced."""
    trace_ids: list[str] = []

    async def one(i: int) -> None:
        with atrace.trace_context() as ctx:
            trace_ids.append(ctx.trace_id)
            try:
                await handle_request(i)
            except PaymentDeclined:
                atrace.exception("checkout failed", module=SERVICE_MODULE, order_id=i)

    await asyncio.gather(*(one(i) for i in range(1, requests + 1)))
    return trace_ids


async def _read_back(dsn: str, schema: str, trace_ids: list[str]) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await connection_init(conn)
        rows = await conn.fetch(
            f"SELECT {', '.join(COLUMNS)} FROM {schema}.records "
            "WHERE trace_id = ANY($1::uuid[]) ORDER BY ts",
            trace_ids,
        )
    finally:
        await conn.close()
    out = []
    for r in rows:
        values = list(r)
        values[TRACE_ID] = values[TRACE_ID].hex if values[TRACE_ID] is not None else None
        out.append(tuple(values))
    return out


async def _main(dsn: str, schema: str, requests: int) -> int:
    atrace.configure(service="atrace-demo", environment="demo", sink=dsn, schema=schema)
    started = time.perf_counter()
    trace_ids = await workload(requests)
    ok = await atrace.aflush(timeout=30)
    await atrace.ashutdown(timeout=10)
    elapsed = time.perf_counter() - started
    m = atrace.metrics()
    if not ok or m.written != m.accepted:
        print(
            f"atrace demo: could not write to the database ({m.sink_errors} sink errors)",
            file=sys.stderr,
        )
        return 1
    rows = await _read_back(dsn, schema, trace_ids)
    from ..sinks.console import ConsoleSink

    console = ConsoleSink(sys.stdout, mode="tree")
    await console.open()
    await console.write(Batch(rows))
    await console.close()
    spans = sum(1 for r in rows if r[KIND] in (Kind.SPAN_END, Kind.SPAN))
    logs = sum(1 for r in rows if r[KIND] == Kind.LOG)
    errors = sum(1 for r in rows if r[LEVEL] >= Level.ERROR)
    traces = len({r[TRACE_ID] for r in rows})
    print(
        f"{traces} traces, {spans} spans, {logs} logs, {errors} errors "
        f"read back from {schema}.records in {elapsed * 1000:.0f} ms "
        f"(ring: {m.implementation}, {m.written} records written)"
    )
    failed = next((r[TRACE_ID] for r in rows if r[LEVEL] >= Level.ERROR and r[TRACE_ID]), None)
    where = "" if schema == "atrace" else f" --schema {schema}"
    print(
        f"look again: atrace traces{where} · atrace errors{where}"
        + (f" · atrace show {str(failed).replace('-', '')}{where}" if failed else "")
    )
    return 0


def run_demo(dsn: str | None, schema: str = "atrace", requests: int = 5) -> int:
    """Run the demo against ``dsn`` (None: the embedded PostgreSQL); returns an exit code."""
    if dsn is None:
        from .._postgres.embedded import data_dir, embedded_dsn

        print(f"starting the embedded PostgreSQL in {data_dir()} ...", file=sys.stderr)
        dsn = embedded_dsn()
    random.seed(0)
    return asyncio.run(_main(dsn, schema, requests))
