"""Per-call cost of emitting spans and logs: atrace (compiled and twin) against its peers."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import DiscardSink

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
N = 200_000
QUICK_N = 20_000
REPEATS = 7
QUICK_REPEATS = 3
IMPORT_RUNS = 10
QUICK_IMPORT_RUNS = 3
CAPACITY = 2_000_000
# The largest batch the configuration accepts: the flusher never reaches it between two drains.
BATCH_SIZE = 1_000_000
# atrace's default batch_size: the most records a flusher lets pile up before it drains them.
STEADY_BLOCK = 5_000

# Targets: per-call limits in ns, and the import time limit in ms.
TARGETS = {
    "span_root": 800.0,
    "span_child": 800.0,
    "async_span": 1000.0,
    "log": 500.0,
    "log_in_span": 500.0,
}
IMPORT_TARGET_MS = 30.0
# (peer case, atrace case, wanted ratio peer/atrace, or None when there is no target)
COMPARISONS = [
    ("otel_span_root", "span_root", 25.0),
    ("otel_span_child", "span_child", 25.0),
    ("structlog_json", "log", 7.0),
    ("structlog_json_containers", "log_containers", None),
    ("structlog_json_devnull", "log", None),
    ("stdlib_queue", "log", None),
    ("loguru_json", "log", None),
]
LABELS = {
    "empty_loop": "empty loop (reference)",
    "span_root": "with atrace.span (root)",
    "span_child": "with atrace.span (child)",
    "async_span": "async with atrace.span",
    "log": "atrace.info, 2 attrs",
    "log_in_span": "atrace.info, 2 attrs, in span",
    "log_containers": "atrace.info, a list and a dict",
    "span_containers": "with atrace.span, a list attr",
    "amit": "await atrace.amit, 2 attrs",
    "otel_span_root": "OTel start_as_current_span (root)",
    "otel_span_child": "OTel start_as_current_span (child)",
    "structlog_json": "structlog JSON (orjson), no-op logger",
    "structlog_json_containers": "structlog JSON, a list and a dict",
    "structlog_json_devnull": "structlog JSON (orjson), BytesLogger /dev/null",
    "stdlib_queue": "logging -> QueueHandler(SimpleQueue)",
    "loguru_json": "loguru serialize=True, no-op sink",
}


# ---- timing -----------------------------------------------------------------------------------


def measure(
    run: Callable[[int], int], n: int, repeats: int, reset: Callable[[], None] | None
) -> dict[str, float]:
    """Median and best ns per call over ``repeats`` loops of ``n`` calls.

    ``reset`` empties whatever buffer the calls fill (outside the timed loop). Two figures: ``n``
    calls in one go, the buffer growing to ``n`` entries (``median``, ``best``), and the same
    calls in blocks of STEADY_BLOCK with the buffer emptied between blocks, as a flusher keeps it
    in a running service (``steady_*``). A buffer of tracked objects makes every cyclic garbage
    collection longer, so the two differ; without a buffer (``reset`` None) they are the same.
    """
    empty = reset or nothing
    run(min(n, 1000))  # warm caches, first-use paths and lazy imports
    empty()
    whole = []
    for _ in range(repeats):
        gc.collect()
        whole.append(run(n) / n)
        empty()
    figures = {"median": statistics.median(whole), "best": min(whole)}
    if reset is None:
        figures.update(steady_median=figures["median"], steady_best=figures["best"])
        return figures
    steady = []
    blocks = max(1, n // STEADY_BLOCK)
    for _ in range(repeats):
        gc.collect()
        elapsed = 0
        for _ in range(blocks):
            elapsed += run(STEADY_BLOCK)
            reset()
        steady.append(elapsed / (blocks * STEADY_BLOCK))
    figures.update(steady_median=statistics.median(steady), steady_best=min(steady))
    return figures


def nothing() -> None:
    pass


def empty_loop(n: int) -> int:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    return time.perf_counter_ns() - t0


# ---- atrace -----------------------------------------------------------------------------------


def atrace_figures(n: int, repeats: int) -> dict[str, Any]:
    """Every atrace case, for whichever implementation this process imported."""
    import atrace
    import atrace._pipeline.ring
    import atrace._pipeline.state

    atrace.configure(
        service="bench",
        sink=DiscardSink(),
        capacity=CAPACITY,
        batch_size=BATCH_SIZE,
        flush_interval=3600,
        policy="drop_oldest",
    )
    span = atrace.span
    info = atrace.info
    amit = atrace.amit

    def drain() -> None:
        atrace._pipeline.state.get_pipeline().ring.drain(10**9)

    def span_root(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with span("x"):
                pass
        return time.perf_counter_ns() - t0

    def span_child(n: int) -> int:
        with span("parent"):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                with span("x"):
                    pass
            return time.perf_counter_ns() - t0

    def log(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            info("msg", a=1, b="x")
        return time.perf_counter_ns() - t0

    # Mutable values are copied at the call (a record keeps what was true when it was made).
    def log_containers(n: int) -> int:
        items, extra = [1, 2], {"k": "v"}
        t0 = time.perf_counter_ns()
        for _ in range(n):
            info("msg", a=items, b=extra)
        return time.perf_counter_ns() - t0

    def span_containers(n: int) -> int:
        tags = ["a", "b"]
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with span("x", tags=tags):
                pass
        return time.perf_counter_ns() - t0

    def log_in_span(n: int) -> int:
        with span("parent"):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                info("msg", a=1, b="x")
            return time.perf_counter_ns() - t0

    async def async_span_loop(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            async with span("x"):
                pass
        return time.perf_counter_ns() - t0

    async def amit_loop(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await amit("msg", a=1, b="x")
        return time.perf_counter_ns() - t0

    # The first record starts the flusher; with no running loop it is a daemon thread that sleeps
    # (flush_interval is an hour, batch_size is out of reach), so no flush runs while timing.
    info("start")
    drain()
    figures: dict[str, Any] = {}
    for name, case in (
        ("span_root", span_root),
        ("span_child", span_child),
        ("log", log),
        ("log_in_span", log_in_span),
        ("log_containers", log_containers),
        ("span_containers", span_containers),
    ):
        figures[name] = measure(case, n, repeats, drain)
    loop = asyncio.new_event_loop()
    try:
        for name, coro in (("async_span", async_span_loop), ("amit", amit_loop)):
            figures[name] = measure(
                lambda n, coro=coro: loop.run_until_complete(coro(n)), n, repeats, drain
            )
    finally:
        loop.close()
    metrics = atrace.metrics()
    emit_impl = None
    try:
        import atrace._emit.hot

        emit_impl = getattr(atrace._emit.hot, "IMPLEMENTATION", None)
    except ImportError:
        pass
    result = {
        "ring_implementation": atrace._pipeline.ring.IMPLEMENTATION,
        "emit_implementation": emit_impl,
        "dropped": metrics.dropped,
        "written": metrics.written,
        "batches": metrics.batches,
        "cases": figures,
    }
    atrace.shutdown()
    return result


def atrace_twin_figures(n: int, repeats: int) -> dict[str, Any]:
    """The atrace cases again in a child process that imports the pure-Python twin."""
    env = {**os.environ, "ATRACE_PUREPYTHON": "1", "PYTHONPATH": _pythonpath()}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only-atrace"]
    cmd += ["--n", str(n), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"twin run failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH", "")
    return str(SRC) + (os.pathsep + current if current else "")


# ---- peers ------------------------------------------------------------------------------------


def otel_figures(n: int, repeats: int) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DiscardExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # Like atrace's setup: a queue that never fills and no export while timing; drained between.
    processor = BatchSpanProcessor(
        DiscardExporter(),
        max_queue_size=CAPACITY,
        max_export_batch_size=BATCH_SIZE,
        schedule_delay_millis=3_600_000,
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    start = tracer.start_as_current_span

    def root(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with start("x"):
                pass
        return time.perf_counter_ns() - t0

    def child(n: int) -> int:
        with start("parent"):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                with start("x"):
                    pass
            return time.perf_counter_ns() - t0

    def drain() -> None:
        processor.force_flush()

    figures = {
        "otel_span_root": measure(root, n, repeats, drain),
        "otel_span_child": measure(child, n, repeats, drain),
    }
    provider.shutdown()
    return figures


class NullLogger:
    """A structlog logger that receives the rendered bytes and drops them."""

    def msg(self, message: Any) -> None:
        pass

    debug = info = warning = error = critical = msg


def structlog_figures(n: int, repeats: int) -> dict[str, Any]:
    import logging

    import orjson
    import structlog

    figures = {}
    devnull = open(os.devnull, "wb")  # noqa: SIM115 (held for the whole case)
    try:
        for name, factory in (
            ("structlog_json", lambda *args: NullLogger()),
            ("structlog_json_devnull", structlog.BytesLoggerFactory(file=devnull)),
        ):
            structlog.reset_defaults()
            structlog.configure(
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer(serializer=orjson.dumps),
                ],
                wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                logger_factory=factory,
                cache_logger_on_first_use=True,
            )
            log = structlog.get_logger()

            def run(n: int, log: Any = log) -> int:
                info = log.info
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    info("msg", a=1, b="x")
                return time.perf_counter_ns() - t0

            figures[name] = measure(run, n, repeats, None)
            if name == "structlog_json":

                def run_containers(n: int, log: Any = log) -> int:
                    info = log.info
                    items, extra = [1, 2], {"k": "v"}
                    t0 = time.perf_counter_ns()
                    for _ in range(n):
                        info("msg", a=items, b=extra)
                    return time.perf_counter_ns() - t0

                figures["structlog_json_containers"] = measure(run_containers, n, repeats, None)
    finally:
        structlog.reset_defaults()
        devnull.close()
    return figures


def stdlib_figures(n: int, repeats: int) -> dict[str, Any]:
    import logging
    import logging.handlers
    import queue

    handler = logging.handlers.QueueHandler(queue.SimpleQueue())
    logger = logging.getLogger("bench")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def run(n: int) -> int:
        info = logger.info
        extra = {"a": 1, "b": "x"}
        t0 = time.perf_counter_ns()
        for _ in range(n):
            info("msg", extra=extra)
        return time.perf_counter_ns() - t0

    def drain() -> None:
        handler.queue = queue.SimpleQueue()

    try:
        return {"stdlib_queue": measure(run, n, repeats, drain)}
    finally:
        logger.removeHandler(handler)


def loguru_figures(n: int, repeats: int) -> dict[str, Any]:
    from loguru import logger

    def sink(message: Any) -> None:
        pass

    logger.remove()
    handler_id = logger.add(sink, serialize=True, level="INFO")

    def run(n: int) -> int:
        info = logger.info
        t0 = time.perf_counter_ns()
        for _ in range(n):
            info("msg", a=1, b="x")
        return time.perf_counter_ns() - t0

    try:
        return {"loguru_json": measure(run, n, repeats, None)}
    finally:
        logger.remove(handler_id)


# ---- import time ------------------------------------------------------------------------------

_IMPORTTIME = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_figures(runs: int, twin: bool) -> dict[str, Any]:
    """``-X importtime`` cumulative µs of the ``atrace`` line, and wall time over a bare start."""
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    env.pop("ATRACE_PUREPYTHON", None)
    if twin:
        env["ATRACE_PUREPYTHON"] = "1"
    cumulative = []
    heaviest: dict[str, int] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import atrace"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stderr.splitlines():
            match = _IMPORTTIME.match(line)
            if match is None:
                continue
            self_us, cum_us, indent, module = match.groups()
            heaviest[module] = min(heaviest.get(module, 1 << 62), int(self_us))
            if module == "atrace" and indent == " ":
                cumulative.append(int(cum_us))
    bare, with_atrace = [], []
    for _ in range(runs):
        # Interleaved, so a burst of load from elsewhere hits both sides alike.
        bare.append(_wall([sys.executable, "-c", "pass"], env))
        with_atrace.append(_wall([sys.executable, "-c", "import atrace"], env))
    top = sorted(heaviest.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return {
        "importtime_cumulative_us": statistics.median(cumulative),
        "wall_bare_ms": statistics.median(bare),
        "wall_import_ms": statistics.median(with_atrace),
        "wall_delta_ms": statistics.median(with_atrace) - statistics.median(bare),
        "heaviest_self_us": dict(top),
    }


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter_ns()
    subprocess.run(cmd, env=env, check=True)
    return (time.perf_counter_ns() - t0) / 1e6


# ---- report -----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    ours = results["atrace"]
    twin_run = results.get("atrace_twin")
    compiled = ours["cases"]
    twin = twin_run["cases"] if twin_run else {}
    peers = results["peers"]
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}; {results['n']:,} calls per loop, {results['repeats']} loops; "
        "ns per call, loop overhead included"
    )
    impls = f"atrace: ring={ours['ring_implementation']} emit={ours['emit_implementation']}"
    if twin_run:
        impls += (
            f"; twin run: ring={twin_run['ring_implementation']} "
            f"emit={twin_run['emit_implementation']}"
        )
    print(impls)
    print(
        f"'whole': {results['n']:,} calls in one go, buffers growing; "
        f"'steady': buffers emptied every {STEADY_BLOCK:,} calls (untimed)\n"
    )
    head = (
        f"{'case':<48}{'whole':>9}{'best':>9}{'steady':>9}"
        f"{'twin':>9}{'twin st.':>9}{'twin/comp':>10}  target"
    )
    print(head)
    print("-" * len(head))
    rows = [("empty_loop", results["empty_loop"])]
    rows += list(compiled.items()) + list(peers.items())
    for key, fig in rows:
        line = f"{LABELS[key]:<48}{fig['median']:>9.1f}{fig['best']:>9.1f}"
        line += f"{fig['steady_median']:>9.1f}"
        if key in twin:
            tw = twin[key]
            line += f"{tw['median']:>9.1f}{tw['steady_median']:>9.1f}"
            line += f"{tw['median'] / fig['median']:>9.2f}x"
        elif key in TARGETS:
            line += " " * 28
        if key in TARGETS:
            line += f"  <= {TARGETS[key]:g}"
        print(line)
    print()
    head = f"{'ratio peer / atrace (medians)':<70}{'whole':>8}{'steady':>8}"
    head += f"{'twin':>8}{'twin st.':>9}  target"
    print(head)
    print("-" * len(head))
    for peer, mine, wanted in COMPARISONS:
        if peer not in peers:
            continue
        p = peers[peer]
        line = f"{LABELS[peer] + ' / ' + LABELS[mine]:<70}"
        line += f"{p['median'] / compiled[mine]['median']:>7.1f}x"
        line += f"{p['steady_median'] / compiled[mine]['steady_median']:>7.1f}x"
        if mine in twin:
            line += f"{p['median'] / twin[mine]['median']:>7.1f}x"
            line += f"{p['steady_median'] / twin[mine]['steady_median']:>8.1f}x"
        else:
            line += " " * 17
        if wanted is not None:
            line += f"  >= {wanted:g}x"
        print(line)
    imports = results.get("import")
    if imports:
        print()
        print(f"{'import atrace':<16}{'-X importtime':>16}{'wall - bare':>14}  target")
        for label, fig in imports.items():
            print(
                f"{label:<16}{fig['importtime_cumulative_us'] / 1000:>13.1f} ms"
                f"{fig['wall_delta_ms']:>11.1f} ms  <= {IMPORT_TARGET_MS:g} ms"
            )
        heaviest = imports["compiled"]["heaviest_self_us"]
        print("heaviest imports (self µs):", ", ".join(f"{k} {v}" for k, v in heaviest.items()))
    print()
    print("targets (compiled, median of 'whole' / of 'steady'):")
    for line in target_lines(results):
        print("  " + line)


def target_lines(results: dict[str, Any]) -> list[str]:
    """One line per target: the figures and whether each meets it."""
    compiled = results["atrace"]["cases"]
    peers = results["peers"]
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    for key, limit in TARGETS.items():
        fig = compiled[key]
        whole, steady = fig["median"], fig["steady_median"]
        lines.append(
            f"{LABELS[key]} <= {limit:g} ns: {whole:.0f} ns {verdict(whole <= limit)}"
            f" / {steady:.0f} ns {verdict(steady <= limit)}"
        )
    for peer, mine, wanted in COMPARISONS:
        if wanted is None or peer not in peers:
            continue
        whole = peers[peer]["median"] / compiled[mine]["median"]
        steady = peers[peer]["steady_median"] / compiled[mine]["steady_median"]
        lines.append(
            f"{LABELS[peer]} / {LABELS[mine]} >= {wanted:g}x: "
            f"{whole:.1f}x {verdict(whole >= wanted)} / {steady:.1f}x {verdict(steady >= wanted)}"
        )
    imports = results.get("import")
    if imports:
        for label, fig in imports.items():
            ms = fig["wall_delta_ms"]
            cum = fig["importtime_cumulative_us"] / 1000
            lines.append(
                f"import atrace ({label}) <= {IMPORT_TARGET_MS:g} ms: wall {ms:.1f} ms "
                f"{verdict(ms <= IMPORT_TARGET_MS)}, -X importtime {cum:.1f} ms "
                f"{verdict(cum <= IMPORT_TARGET_MS)}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=None, help=f"calls per timed loop ({N:,})")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed loops ({REPEATS})")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small N)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--no-twin", action="store_true", help="skip the pure-Python twin run")
    parser.add_argument("--no-import", action="store_true", help="skip the import-time figures")
    parser.add_argument(
        "--only-atrace", action="store_true", help="measure atrace only and print JSON (internal)"
    )
    args = parser.parse_args()
    n = args.n or (QUICK_N if args.quick else N)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)

    if args.only_atrace:
        json.dump(atrace_figures(n, repeats), sys.stdout)
        return

    results: dict[str, Any] = {
        "n": n,
        "repeats": repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "empty_loop": measure(empty_loop, n, repeats, None),
        "atrace": atrace_figures(n, repeats),
        "atrace_twin": None if args.no_twin else atrace_twin_figures(n, repeats),
        "peers": {},
    }
    for figures in (otel_figures, structlog_figures, stdlib_figures, loguru_figures):
        results["peers"].update(figures(n, repeats))
    if not args.no_import:
        runs = QUICK_IMPORT_RUNS if args.quick else IMPORT_RUNS
        results["import"] = {
            "compiled": import_figures(runs, twin=False),
            "twin": import_figures(runs, twin=True),
        }
    report(results)
    if args.json:
        results["targets"] = target_lines(results)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
