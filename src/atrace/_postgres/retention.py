"""Retention: old records go a day partition at a time, detached and dropped, never DELETEd.

``--days N`` keeps today (UTC) and the N days before it: every day partition older than that is
detached from ``<schema>.records`` and dropped, the rows of those days that sit in the default
(outlier) partition are deleted, and so are the batch ledger's entries of those days (a retried
batch arrives within hours, not weeks). After a run nothing older than the limit is returned by
any query. ``max_bytes`` then drops the oldest partitions left, one by one, until the schema's
records fit (today's and later partitions are never dropped).

**Retroactive sampling** (``errors_days``): before a day partition goes, the complete traces in
it that turned out to matter — one with an error (level 40 or more, or a failed span), a span
slower than ``slow_ms``, or a trace id in the ``keep_rate`` sample — are kept: the day's
partition is replaced, in one transaction, by a partition of the same day holding only their
rows (``records_YYYYMMDD_kept``), which every query reads as any other, until it is
``errors_days`` old. Whether a trace matters is decided on all of its rows, wherever they are
(a trace that crosses midnight is kept whole, day by day). The sample is taken on the lowest 56
bits of the trace id, as OpenTelemetry's ratio sampler and W3C's random trace ids have it, so
that it agrees with head sampling at the same rate.

One run at a time per schema, across processes: a run that finds another one going (a
PostgreSQL advisory lock) does nothing and says so. Each partition goes in a transaction of its
own with a short lock time-out, so that writers wait at most that long; one that cannot be
detached now is left for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = (
    "Keep",
    "Partition",
    "RetentionReport",
    "apply_retention",
    "day_partitions",
    "parse_size",
)

_log = logging.getLogger("atrace.retention")
_PREFIX = "records_"
_LOCK_TIMEOUT = "5s"
_KEPT = "_kept"


@dataclass(frozen=True)
class Keep:
    """Which traces retroactive sampling keeps, and for how long."""

    days: int  # kept partitions live this many days before today
    slow_ms: float | None = None
    rate: float = 0.0

    def sql(self, schema: str, source: str) -> str:
        """The (project, trace_id) of the traces in ``source`` worth keeping."""
        matters = ["r.level >= 40", "r.status = 2"]
        if self.slow_ms is not None:
            matters.append(f"r.duration_ns >= {int(self.slow_ms * 1_000_000)}")
        test = (
            f"EXISTS (SELECT 1 FROM {schema}.records r WHERE r.project = t.project "
            f"AND r.trace_id = t.trace_id AND ({' OR '.join(matters)}))"
        )
        if self.rate > 0:
            threshold = min(int(self.rate * (1 << 56)), 1 << 56)
            low56 = "('x' || right(replace(t.trace_id::text, '-', ''), 14))::bit(56)::bigint"
            test = f"({test} OR {low56} < {threshold})"
        return (
            f"SELECT t.project, t.trace_id FROM (SELECT DISTINCT project, trace_id FROM {source} "
            f"WHERE trace_id IS NOT NULL) AS t WHERE {test}"
        )


@dataclass(frozen=True)
class Partition:
    """One day partition: its table, its UTC day, its size on disk and its row estimate."""

    name: str
    day: dt.date
    bytes: int
    rows: int
    kept: bool = False  # a partition of traces kept by retroactive sampling


@dataclass
class RetentionReport:
    """What a run dropped (or, dry, would drop) and what it kept."""

    cutoff: dt.datetime  # nothing older is kept
    dry_run: bool
    dropped: list[Partition] = field(default_factory=list)
    default_rows: int = 0  # rows deleted from the default partition
    ledger_rows: int = 0  # batch ledger entries deleted
    kept: list[Partition] = field(default_factory=list)
    kept_bytes: int = 0  # the kept partitions, the default one included
    skipped: str | None = None  # why nothing was done (another run holds the lock)
    failed: list[str] = field(default_factory=list)  # partitions left for the next run
    kept_traces: int = 0  # traces kept by retroactive sampling (dry: that would be)

    def lines(self) -> list[str]:
        """The report as a user reads it, one fact a line."""
        if self.skipped:
            return [f"nothing done: {self.skipped}"]
        verb = "would drop" if self.dry_run else "dropped"
        out = [f"limit: records before {self.cutoff:%Y-%m-%d %H:%M} UTC"]
        if self.dropped:
            first, last = self.dropped[0].name, self.dropped[-1].name
            names = first if first == last else f"{first} … {last}"
            size = sum(p.bytes for p in self.dropped)
            rows = sum(p.rows for p in self.dropped)
            plural = "s" if len(self.dropped) != 1 else ""
            out.append(f"{verb} {len(self.dropped)} day partition{plural}: {names}")
            out.append(f"  {_size(size)}, about {_n(rows, 'record')}")
        else:
            out.append(f"{verb} no day partition")
        if self.kept_traces:
            keep_verb = "would keep" if self.dry_run else "kept"
            out.append(f"{keep_verb} {_n(self.kept_traces, 'trace')} that mattered, in their days")
        rows_verb = "would delete" if self.dry_run else "deleted"
        out.append(f"{rows_verb} {_n(self.default_rows, 'record')} from the default partition")
        out.append(f"{rows_verb} {_n(self.ledger_rows, 'batch ledger entry', 'entries')}")
        out.append(f"kept {_n(len(self.kept), 'day partition')}, {_size(self.kept_bytes)} in all")
        for name in self.failed:
            out.append(f"left for the next run: {name} (busy)")
        return out


def _n(count: int, noun: str, plural: str | None = None) -> str:
    if count == 1:
        return f"1 {noun}"
    many = noun + "s" if plural is None else noun.rsplit(" ", 1)[0] + " " + plural
    return f"{count:,} {many}"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} TB"  # pragma: no cover


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3,
          "GB": 1024**3, "T": 1024**4, "TB": 1024**4}  # fmt: skip


def parse_size(text: str) -> int:
    """``"50GB"``, ``"512M"``, ``"1048576"`` as bytes (binary units); ValueError otherwise."""
    raw = text.strip().upper().replace(" ", "")
    digits = raw.rstrip("KMGTB")
    unit = raw[len(digits) :]
    if not digits or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (say 50GB, 512MB or a number of bytes)")
    try:
        number = float(digits)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (say 50GB, 512MB or a number of bytes)") from None
    if number <= 0:
        raise ValueError(f"not a size: {text!r} (it must be more than 0)")
    return int(number * _UNITS[unit])


async def day_partitions(conn: Any, schema: str) -> tuple[list[Partition], int]:
    """The schema's day partitions, oldest first, and the default partition's size."""
    rows = await conn.fetch(
        "SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes, "
        "greatest(c.reltuples, 0)::bigint AS rows "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = $1 AND p.relname = 'records'",
        schema,
    )
    days: list[Partition] = []
    default_bytes = 0
    for r in rows:
        name = r["name"]
        if name == "records_default":
            default_bytes = int(r["bytes"])
            continue
        stem = name[len(_PREFIX) :]
        kept = stem.endswith(_KEPT)
        try:
            day = dt.datetime.strptime(stem.removesuffix(_KEPT), "%Y%m%d").date()
        except ValueError:
            continue  # not a partition atrace made
        days.append(Partition(name, day, int(r["bytes"]), int(r["rows"]), kept))
    days.sort(key=lambda p: p.day)
    return days, default_bytes


async def apply_retention(
    conn: Any,
    schema: str,
    *,
    days: int,
    max_bytes: int | None = None,
    dry_run: bool = False,
    today: dt.date | None = None,
    keep: Keep | None = None,
) -> RetentionReport:
    """Drop what is older than today (UTC) minus ``days``, then the oldest partitions left while
    the records take more than ``max_bytes``; with ``keep``, the traces that mattered stay for
    ``keep.days``; ``dry_run`` only reports (see the module)."""
    if days < 0:
        raise ValueError("days must be 0 or more")
    if keep is not None and keep.days <= days:
        raise ValueError("traces are kept longer than the rest: errors days must exceed days")
    today = today or dt.datetime.now(dt.timezone.utc).date()
    first_kept = today - dt.timedelta(days=days)
    cutoff = dt.datetime.combine(first_kept, dt.time(), dt.timezone.utc)
    report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
    key = f"atrace:retention:{schema}"
    if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
        report.skipped = "another retention run on this schema is going"
        return report
    try:
        partitions, default_bytes = await day_partitions(conn, schema)
        keep_first = today - dt.timedelta(days=keep.days) if keep is not None else first_kept

        def expired(p: Partition) -> bool:
            return p.day < (keep_first if p.kept else first_kept)

        old = [p for p in partitions if expired(p)]
        kept = [p for p in partitions if not expired(p)]
        if max_bytes is not None:
            total = default_bytes + sum(p.bytes for p in kept)
            # Oldest first, never today's or a later day's partition.
            while total > max_bytes and kept and kept[0].day < today:
                extra = kept.pop(0)
                old.append(extra)
                total -= extra.bytes
        # Literals, not parameters: the collector's connections carry their own ts codec.
        limit = f"'{cutoff:%Y-%m-%d} 00:00:00+00'"
        if old and max_bytes is not None:
            # Past the age limit too: what is older than the newest dropped day goes as well.
            newest = max(p.day for p in old) + dt.timedelta(days=1)
            limit = f"'{max(newest, first_kept):%Y-%m-%d} 00:00:00+00'"
        # Traces worth keeping, in the plain partitions about to go and in the default one.
        sampled = [p for p in old if keep is not None and not p.kept and p.day >= keep_first]
        default_old = f"{schema}.records_default WHERE ts < {limit}"
        spare = ""
        if keep is not None:
            counts = {}
            for part in sampled:
                sql = keep.sql(schema, f"{schema}.{part.name}")
                counts[part.name] = int(await conn.fetchval(f"SELECT count(*) FROM ({sql}) k"))
            # A day with nothing worth keeping simply goes.
            sampled = [part for part in sampled if counts[part.name]]
            report.kept_traces = sum(counts.values())
            kept_limit = f"'{keep_first:%Y-%m-%d} 00:00:00+00'"
            spare = (
                f" AND (ts < {kept_limit} OR trace_id IS NULL OR (project, trace_id) NOT IN "
                f"({keep.sql(schema, f'{schema}.records_default')}))"
            )
        if dry_run:
            report.dropped = old
            report.default_rows = int(
                await conn.fetchval(f"SELECT count(*) FROM {default_old}{spare}")
            )
            report.ledger_rows = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {schema}.batches WHERE written_at < {limit}"
                )
            )
        else:
            for part in old:
                if part in sampled:
                    assert keep is not None
                    swapped = await _swap(conn, schema, part, keep)
                    if swapped is not None:
                        kept.append(swapped)
                    done = swapped is not None
                else:
                    done = await _drop(conn, schema, part)
                if done:
                    report.dropped.append(part)
                else:
                    report.failed.append(part.name)
                    kept.append(part)
            status = await conn.execute(f"DELETE FROM {default_old}{spare}")
            report.default_rows = int(status.split()[-1])
            status = await conn.execute(f"DELETE FROM {schema}.batches WHERE written_at < {limit}")
            report.ledger_rows = int(status.split()[-1])
            _, default_bytes = await day_partitions(conn, schema)
        kept.sort(key=lambda p: p.day)
        report.kept = kept
        report.kept_bytes = default_bytes + sum(p.bytes for p in kept)
        return report
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _swap(conn: Any, schema: str, part: Partition, keep: Keep) -> Partition | None:
    """Replace a day's partition by one of its traces that matter (see the module); None when
    the partition is busy now."""
    name = f"{_PREFIX}{part.day:%Y%m%d}{_KEPT}"
    nxt = part.day + dt.timedelta(days=1)
    bounds = f"FROM ('{part.day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            await conn.execute(
                f"CREATE TABLE {schema}.{name} (LIKE {schema}.records INCLUDING DEFAULTS "
                "INCLUDING CONSTRAINTS)"
            )
            moved = await conn.execute(
                f"INSERT INTO {schema}.{name} SELECT p.* FROM {schema}.{part.name} p "
                f"JOIN ({keep.sql(schema, f'{schema}.{part.name}')}) k "
                "ON k.project = p.project AND k.trace_id = p.trace_id"
            )
            await conn.execute(
                f"ALTER TABLE {schema}.records DETACH PARTITION {schema}.{part.name}"
            )
            await conn.execute(f"DROP TABLE {schema}.{part.name}")
            await conn.execute(
                f"ALTER TABLE {schema}.records ATTACH PARTITION {schema}.{name} FOR VALUES {bounds}"
            )
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == "55P03":
            _log.warning("atrace: retention left %s.%s for the next run: busy", schema, part.name)
            return None
        raise
    rows = int(moved.split()[-1])
    _log.info("atrace: retention kept %s rows of %s.%s in %s", rows, schema, part.name, name)
    return Partition(name, part.day, 0, rows, kept=True)


async def _drop(conn: Any, schema: str, part: Partition) -> bool:
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            await conn.execute(
                f"ALTER TABLE {schema}.records DETACH PARTITION {schema}.{part.name}"
            )
            await conn.execute(f"DROP TABLE {schema}.{part.name}")
    except Exception as exc:
        state = getattr(exc, "sqlstate", None)
        if state == "55P03":  # lock_not_available: writers busy; the next run takes it
            _log.warning("atrace: retention left %s.%s for the next run: busy", schema, part.name)
            return False
        if state == "42P01":  # undefined_table: another process dropped it meanwhile
            return True
        raise
    _log.info("atrace: retention dropped %s.%s", schema, part.name)
    return True
