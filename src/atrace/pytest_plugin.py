"""The pytest plugin: an ``atrace_capture`` fixture, and captured records shown on failure.

Registered through the ``pytest11`` entry point, so a project that installs atrace gets the
fixture without configuring anything::

    def test_checkout(atrace_capture):
        checkout(order_id=42)
        assert atrace_capture.span("charge").attrs == {"order_id": 42}

The fixture works in sync and async tests alike (it needs no event loop). When a test that used
it fails, the report gets a "Captured atrace records" section with the span tree and its logs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import Capture

__all__ = ("atrace_capture", "pytest_runtest_makereport")

_CAPTURE = pytest.StashKey["Capture"]()


@pytest.fixture
def atrace_capture(request: pytest.FixtureRequest) -> Iterator[Capture]:
    """Every atrace record of the test, in memory (see :func:`atrace.testing.capture`)."""
    # Imported here: a test run that never asks for the fixture does not load the pipeline.
    from .testing import capture

    with capture() as cap:
        request.node.stash[_CAPTURE] = cap
        try:
            yield cap
        finally:
            del request.node.stash[_CAPTURE]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the captured records to the report of a failed test that used ``atrace_capture``."""
    report = yield
    if report.when == "call" and report.failed:
        cap = item.stash.get(_CAPTURE, None)
        if cap is not None:
            report.sections.append(
                ("Captured atrace records", cap.tree(logs=True) or "(no spans or logs)")
            )
    return report
