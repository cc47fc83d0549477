"""Turning a configured sink spec into a sink: URLs, names and objects."""

from __future__ import annotations

from typing import Any

import pytest

from atrace.errors import ConfigError
from atrace.sinks import resolve
from atrace.sinks.console import ConsoleSink
from atrace.sinks.http import HttpSink
from atrace.sinks.otlp import OtlpSink
from atrace.sinks.postgres import PostgresSink


class TestResolve:
    @pytest.mark.parametrize(
        ("spec", "kind", "name"),
        [
            ("postgresql://u@h/db", PostgresSink, "postgresql"),
            ("postgres://u@h/db", PostgresSink, "postgresql"),
            ("http://127.0.0.1:4319", HttpSink, "http:127.0.0.1:4319"),
            ("https://collector.example:8443", HttpSink, "http:collector.example:8443"),
            ("otlp+http://127.0.0.1:4318", OtlpSink, "otlp:127.0.0.1:4318"),
            ("console", ConsoleSink, None),
        ],
    )
    def test_urls(self, spec: str, kind: type, name: str | None) -> None:
        """Each URL scheme gives its sink, pointed where the URL says."""
        sink = resolve(spec)
        assert isinstance(sink, kind)
        if name is not None:
            assert sink.name == name

    def test_otlp_reads_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """'otlp' alone takes its endpoint from OTEL_EXPORTER_OTLP_ENDPOINT."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.1.2.3:4318")
        sink = resolve("otlp")
        assert isinstance(sink, OtlpSink) and sink.name == "otlp:10.1.2.3:4318"

    @pytest.mark.parametrize("spec", ["ftp://x", "kafka", "", 42])
    def test_refused(self, spec: Any) -> None:
        """Anything else is a ConfigError naming the accepted forms."""
        with pytest.raises(ConfigError, match="sink"):
            resolve(spec)

    def test_sink_objects_pass_through(self) -> None:
        """An object with open/write/close and a name is used as it is."""

        class Mine:
            name = "mine"

            async def open(self) -> None: ...

            async def write(self, batch: Any) -> None: ...

            async def close(self) -> None: ...

        sink = Mine()
        assert resolve(sink) is sink
