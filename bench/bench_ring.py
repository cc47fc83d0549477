"""Benchmark of the record ring: the compiled ring against its pure-Python twin, in ns per record.

Run from the repository root after ``python setup.py build_ext --inplace``::

    PYTHONPATH=src python bench/bench_ring.py [--rounds N]

Each figure is the best of several rounds and includes the cost of the calling Python loop, which
is printed first (the same loop calling ``len``) so it can be subtracted by eye.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from atrace import _ring_py

try:
    from atrace import _ring
except ImportError:
    sys.exit("the compiled ring is not built: run `python setup.py build_ext --inplace` first")

N = 1_000_000
DRAIN_BATCH = 1000
RECORD = (1, 2, "message", None)


def best_of(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def builtin_call_loop() -> float:
    # The same loop calling a one-argument C function: the floor any push from Python pays.
    call = len
    record = RECORD
    t0 = time.perf_counter_ns()
    for _ in range(N):
        call(record)
    return (time.perf_counter_ns() - t0) / N


def push_with_room(cls: Any) -> float:
    ring = cls(N)
    push = ring.push
    record = RECORD
    t0 = time.perf_counter_ns()
    for _ in range(N):
        push(record)
    return (time.perf_counter_ns() - t0) / N


def push_full_drop_oldest(cls: Any) -> float:
    ring = cls(1024, "drop_oldest")
    push = ring.push
    record = RECORD
    for _ in range(1024):
        push(record)
    t0 = time.perf_counter_ns()
    for _ in range(N):
        push(record)
    return (time.perf_counter_ns() - t0) / N


def try_push_with_room(cls: Any) -> float:
    ring = cls(N, "block")
    try_push = ring.try_push
    record = RECORD
    t0 = time.perf_counter_ns()
    for _ in range(N):
        try_push(record)
    return (time.perf_counter_ns() - t0) / N


def drain_batches(cls: Any) -> float:
    ring = cls(N)
    push = ring.push
    record = RECORD
    for _ in range(N):
        push(record)
    drain = ring.drain
    t0 = time.perf_counter_ns()
    for _ in range(N // DRAIN_BATCH):
        drain(DRAIN_BATCH)
    return (time.perf_counter_ns() - t0) / N


CASES: list[tuple[str, Callable[[Any], float]]] = [
    ("push, room left", push_with_room),
    ("push, full, drop_oldest", push_full_drop_oldest),
    ("try_push, room left", try_push_with_room),
    (f"drain({DRAIN_BATCH}), per record", drain_batches),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="best of this many runs per figure")
    rounds = parser.parse_args().rounds

    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    print(f"{N:,} operations per round, best of {rounds} rounds")
    print(f"loop calling a C function: {best_of(rounds, builtin_call_loop):.1f} ns/op\n")
    print(f"{'operation':<28}{'cython':>10}{'python':>10}{'ratio':>9}")
    for name, case in CASES:
        fast = best_of(rounds, lambda case=case: case(_ring.Ring))
        slow = best_of(rounds, lambda case=case: case(_ring_py.Ring))
        print(f"{name:<28}{fast:>7.1f} ns{slow:>7.1f} ns{slow / fast:>8.1f}x")


if __name__ == "__main__":
    main()
