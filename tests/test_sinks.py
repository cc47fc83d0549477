"""The sink contract and its defaults; turning a configured spec into a sink."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

import atrace
from _helpers import EVERY_EXTRA
from atrace._delivery.classify import Verdict, classify
from atrace._records import MESSAGE
from atrace.errors import ConfigError
from atrace.sinks import Batch, Sink, resolve
from atrace.sinks._base import SinkOptions
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


# configure() in a fresh interpreter where the modules named are missing: ``None`` in sys.modules
# makes both ``import`` and ``importlib.util.find_spec`` find nothing, as for a package never
# installed.
_CONFIGURE_WITHOUT = """
import sys
sys.modules.update(dict.fromkeys({blocked!r}))
import atrace
try:
    atrace.configure({arguments})
except atrace.ConfigError as exc:
    print(f"ConfigError: {{exc}}")
else:
    print("configured")
"""


def configure_without(blocked: tuple[str, ...], arguments: str) -> str:
    """What ``atrace.configure(arguments)`` does when ``blocked`` are not installed."""
    program = _CONFIGURE_WITHOUT.format(blocked=blocked, arguments=arguments)
    # No sink from the environment: the default is what configure() with no sink gets.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATRACE_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class TestMissingExtras:
    @pytest.mark.parametrize(
        ("blocked", "arguments", "reason"),
        [
            (
                ("asyncpg",),
                "sink='postgresql://app:s3cret@db/app'",
                "sink='postgresql://app:***@db/app': needs asyncpg, which is not installed: "
                "pip install 'atrace[pg]'",
            ),
            (
                ("msgpack",),
                "sink='http://127.0.0.1:4319'",
                "sink='http://127.0.0.1:4319': needs msgpack, which is not installed: "
                "pip install 'atrace[http]'",
            ),
            (
                ("aiohttp",),
                "sink='https://collector.example'",
                "sink='https://collector.example': needs aiohttp, which is not installed: "
                "pip install 'atrace[http]'",
            ),
            (
                ("opentelemetry.proto",),
                "sink='otlp+http://127.0.0.1:4318'",
                "sink='otlp+http://127.0.0.1:4318': needs opentelemetry-proto, which is not "
                "installed: pip install 'atrace[otlp]'",
            ),
            (
                ("google.protobuf",),
                "sink='otlp'",
                "sink='otlp': needs protobuf, which is not installed: pip install 'atrace[otlp]'",
            ),
            (
                ("asyncpg",),
                "sink='embedded'",
                "sink='embedded': needs asyncpg, which is not installed: "
                "pip install 'atrace[embedded]'",
            ),
            (
                ("pgserver",),
                "",
                "sink='embedded': no sink is configured, and the embedded PostgreSQL needs "
                "pgserver, which is not installed: pip install 'atrace[embedded]'",
            ),
        ],
        ids=[
            "pg",
            "http-msgpack",
            "http-aiohttp",
            "otlp-proto",
            "otlp-protobuf",
            "embedded",
            "default",
        ],
    )
    def test_configure_names_the_extra(
        self, blocked: tuple[str, ...], arguments: str, reason: str
    ) -> None:
        """configure() with a sink whose dependency is not installed raises a ConfigError that
        names the extra to install, before any record is written."""
        assert configure_without(blocked, arguments) == f"ConfigError: {reason}"

    def test_sinks_without_extras_still_configure(self) -> None:
        """The console sink needs no extra: with every optional dependency missing, configure()
        takes it."""
        everything = EVERY_EXTRA
        assert configure_without(everything, "sink='console'") == "configured"


class Plain:
    """A sink with only the required members, and no base class."""

    name = "plain"

    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None:
        self.rows.extend(batch.rows)

    async def close(self) -> None: ...


class TestContract:
    def test_plain_object_is_a_sink(self) -> None:
        """An object with name, open, write and close satisfies Sink without subclassing it."""
        assert isinstance(Plain(), Sink)
        assert not isinstance(object(), Sink)

    def test_defaults_for_what_a_sink_leaves_out(self) -> None:
        """A sink without the optional members gets concurrency 1, its name as spill key, and
        the default classifier."""
        options = SinkOptions.of(Plain())
        assert (options.name, options.concurrency, options.spill_key) == ("plain", 1, "plain")
        assert options.classify is classify

    def test_declared_members_are_used(self) -> None:
        """concurrency, spill_key and classify are taken from the sink when it has them."""

        def never(exc: BaseException) -> Verdict:
            return Verdict(retryable=False, reason="never")

        sink = Plain()
        sink.concurrency = 3  # type: ignore[attr-defined]
        sink.spill_key = "db-eu/1:5432"  # type: ignore[attr-defined]
        sink.classify = never  # type: ignore[attr-defined]
        options = SinkOptions.of(sink)
        assert (options.concurrency, options.spill_key) == (3, "db-eu_1_5432")
        assert options.classify is never

    def test_none_means_the_default(self) -> None:
        """An optional member set to None takes the default."""
        sink = Plain()
        sink.spill_key = None  # type: ignore[attr-defined]
        sink.classify = None  # type: ignore[attr-defined]
        options = SinkOptions.of(sink)
        assert options.spill_key == "plain" and options.classify is classify

    @pytest.mark.parametrize(
        ("key", "value"),
        [("concurrency", 0), ("concurrency", True), ("concurrency", 1.5), ("classify", "retry")],
    )
    def test_bad_members_are_refused(self, key: str, value: Any) -> None:
        """A concurrency below one or not an integer, or a classify that cannot be called, is a
        ConfigError naming the sink and the member."""
        sink = Plain()
        setattr(sink, key, value)
        with pytest.raises(ConfigError, match=f"plain.{key}"):
            SinkOptions.of(sink)

    def test_builtin_sinks_declare_their_options(self) -> None:
        """The HTTP sink's declared concurrency and spill key reach its options."""
        options = SinkOptions.of(HttpSink("http://127.0.0.1:4319"))
        assert options.concurrency == 2
        assert options.spill_key.startswith("http-127.0.0.1_4319-")

    async def test_plain_sink_receives_batches(self) -> None:
        """A plain sink object configured as the sink receives every record."""
        sink = Plain()
        atrace.configure(service="t", sink=sink, flush_interval=3600)
        atrace.info("to a plain sink")
        assert await atrace.aflush()
        assert [row[MESSAGE] for row in sink.rows] == ["to a plain sink"]
