"""The exception tree: drawn in errors.py's docstring, and the classes are exactly that tree."""

from __future__ import annotations

import builtins
import re

import pytest

import atrace
import atrace.client
from atrace import errors
from atrace.sinks.http import HttpSinkError
from atrace.sinks.otlp import OtlpExportError

# The exception classes of errors.__all__ (it also has redact(), for their messages).
CLASSES = [name for name in errors.__all__ if isinstance(getattr(errors, name), type)]
_NODE = re.compile(r"^(?P<indent>[│ ]*)[├└]── (?P<name>\w+)(?: \(also (?P<also>\w+)\))?")


def drawing() -> list[tuple[str, str | None, str | None]]:
    """``(class, parent, also)`` for each class drawn in the docstring, top to bottom."""
    text = errors.__doc__ or ""
    lines = text.split("::", 1)[1].splitlines()
    root = next(line.strip() for line in lines if line.strip())
    nodes: list[tuple[str, str | None, str | None]] = [(root, None, None)]
    path = [root]
    for line in lines:
        match = _NODE.match(line.strip("\n")[4:])  # the drawing is indented by four spaces
        if match is None:
            continue
        depth = len(match["indent"]) // 4 + 1
        del path[depth:]
        nodes.append((match["name"], path[-1], match["also"]))
        path.append(match["name"])
    return nodes


class TestDrawing:
    def test_every_class_is_drawn_once(self) -> None:
        """The drawing names each class of __all__ exactly once, and nothing else."""
        names = [name for name, _, _ in drawing()]
        assert len(names) == len(set(names))
        assert set(names) == set(CLASSES)

    def test_drawn_parents_are_the_real_bases(self) -> None:
        """Each class drawn under a parent subclasses it, and the root is AtraceError."""
        nodes = drawing()
        assert nodes[0] == ("AtraceError", None, None)
        for name, parent, _ in nodes[1:]:
            assert parent is not None
            assert getattr(errors, parent) in getattr(errors, name).__bases__, (name, parent)

    def test_also_names_the_builtin_it_mixes_in(self) -> None:
        """A drawn "(also X)" is a real base: generic handlers of X catch the class."""
        mixed = {name: also for name, _, also in drawing() if also}
        assert mixed == {
            "ConfigError": "ValueError",
            "MissingExtraError": "ImportError",
            "BadRequestError": "ValueError",
            "NotFoundError": "LookupError",
            "TransportError": "OSError",
            "WireError": "ValueError",
            "QueryError": "ValueError",
        }
        for name, also in mixed.items():
            assert issubclass(getattr(errors, name), getattr(builtins, also))

    @pytest.mark.parametrize("name", CLASSES)
    def test_every_class_is_an_atrace_error(self, name: str) -> None:
        """Catching AtraceError catches every exception atrace defines."""
        assert issubclass(getattr(errors, name), errors.AtraceError)


class TestOldHomes:
    def test_collector_errors_keep_their_names(self) -> None:
        """atrace.CollectorError and atrace.client's error names are the classes of errors."""
        assert atrace.CollectorError is atrace.client.CollectorError is errors.CollectorError
        for name in (
            "AuthenticationError",
            "BadRequestError",
            "NotFoundError",
            "PermissionDeniedError",
            "ServerError",
            "TransportError",
        ):
            assert getattr(atrace.client, name) is getattr(errors, name)
            assert name in atrace.client.__all__

    def test_sink_error_aliases(self) -> None:
        """HttpSinkError and OtlpExportError are SinkHTTPError under the names users catch."""
        assert HttpSinkError is OtlpExportError is errors.SinkHTTPError


class TestMessages:
    def test_query_error_names_field_and_value(self) -> None:
        """A QueryError says which parameter, what value and why, as a ConfigError does."""
        exc = errors.QueryError("limit", "0", "expected 1 to 1000")
        assert (exc.field, exc.value, exc.reason) == ("limit", "0", "expected 1 to 1000")
        assert str(exc) == "limit='0': expected 1 to 1000"
        assert not isinstance(exc, errors.ConfigError)

    def test_collector_error_message(self) -> None:
        """A CollectorError shows the status when there was an answer, and the URL."""
        assert str(errors.NotFoundError("no such trace", status=404, url="u")) == (
            "404 no such trace (u)"
        )
        assert str(errors.TransportError("refused", url="u")) == "refused (u)"

    def test_sink_http_error_carries_its_verdict(self) -> None:
        """A SinkHTTPError names the sink and batch size, and keeps status and Retry-After."""
        exc = errors.SinkHTTPError(
            "HTTP 503", sink="http:h:1", batch_size=3, status=503, retryable=True, retry_after=2
        )
        assert str(exc) == "http:h:1: HTTP 503 (batch of 3)"
        assert (exc.status, exc.retryable, exc.retry_after) == (503, True, 2)


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
            ("http://u:p@h:1/v1/ingest failed", "http://u:***@h:1/v1/ingest failed"),
            ("host=db password=s3cret user=app", "host=db password=*** user=app"),
            (
                "postgresql://db/app?password=s3cret&sslmode=require",
                "postgresql://db/app?password=***&sslmode=require",
            ),
            ("postgresql://app@db/app", "postgresql://app@db/app"),
            ("no credentials here", "no credentials here"),
        ],
    )
    def test_passwords_in_urls_and_dsns(self, text: str, shown: str) -> None:
        """Every password in a URL or DSN becomes ***; the rest of the text stays."""
        assert errors.redact(text) == shown

    def test_config_errors_and_reprs_never_show_a_password(self) -> None:
        """A ConfigError about a DSN, Config's repr and a bad OTLP header name no secret."""
        from atrace.sinks.otlp import parse_headers

        dsn = "postgresql://app:s3cret@db/app"
        with pytest.raises(atrace.ConfigError) as bad:
            atrace.Config(sinks=dsn)  # a string, not a sequence of sinks
        with pytest.raises(atrace.ConfigError) as header:
            parse_headers("x-team=pay,authorization Bearer t0ken")
        texts = [str(bad.value), repr(atrace.Config(sinks=[dsn])), str(header.value)]
        assert all("s3cret" not in t and "t0ken" not in t for t in texts), texts
        assert "header 2" in str(header.value)
