"""No secret in any output: API keys, DSN passwords and URL credentials are masked in log lines,
exception messages, reprs, CLI output and response bodies."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from _collector import CollectorServer, atrace_command, raw_request
from _pg import PgServer
from _proxy import TCPProxy
from atrace import Config
from atrace.client import AsyncClient, Client
from atrace.collector._app import make_app
from atrace.collector._redact import CollectorRunner, SecretFilter, install_filters
from atrace.errors import CollectorError, ConfigError, SinkError, TransportError, redact
from atrace.sinks.http import HttpSink

KEY = "atk_0123456789abcdef_" + "Zq9" * 14 + "x"  # a well-formed key: 43 characters of secret
SECRET = KEY[len("atk_0123456789abcdef_") :]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://app:s3cr3t@db:5432/app", "s3cr3t"),
        ("postgresql://app:p@ss@db:5432/app", "ss@db"),  # a password holding '@'
        ("connect to http://u:hunter2@collector/v1 failed", "hunter2"),
        ("host=db password=s3cr3t user=app", "s3cr3t"),
        ("host=db password='a b c' user=app", "a b c"),
        ("dsn?sslmode=require&password=s3cr3t", "s3cr3t"),
        ('{"password": "s3cr3t"}', "s3cr3t"),
        (KEY, SECRET),
        (f"b'Authorization : Bearer {KEY}'", SECRET),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("x-api-key: s3cr3t-key", "s3cr3t-key"),
        (f"Content-Length: x{KEY}", SECRET),
        ("atk_0123_short_mistyped", "short_mistyped"),
    ],
)
def test_redact_shapes(text: str, secret: str) -> None:
    """redact() masks each shape of secret atrace knows, leaving the rest of the text."""
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


def test_redact_keeps_plain_text_and_key_ids() -> None:
    """Text without a secret is returned as it is, and a key keeps its public id."""
    assert redact("GET /v1/search 200 in 3 ms") == "GET /v1/search 200 in 3 ms"
    assert redact(KEY) == "atk_0123456789abcdef_***"


def test_errors_and_reprs_mask_passwords_holding_at() -> None:
    """ConfigError, SinkError, CollectorError and Config's repr mask a whole password."""
    dsn = "postgresql://app:p@ss@db:5432/app"
    texts = [
        str(ConfigError("dsn", dsn, "bad")),
        repr(ConfigError("dsn", dsn, "bad")),
        str(SinkError(f"cannot reach {dsn}", sink="pg", batch_size=1)),
        str(CollectorError("refused", status=401, url="http://u:p@ss@h:1/v1/search")),
        str(CollectorError(f"bad key {KEY}", status=401, url="http://h")),
        repr(Config(sinks=[HttpSink("http://u:p@ss@127.0.0.1:9/v1/ingest")])),
    ]
    for text in texts:
        assert "p@ss" not in text and "ss@" not in text and SECRET not in text, text


async def test_client_errors_mask_url_credentials() -> None:
    """A client whose URL carries credentials never shows them in its errors."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:s3cr3t@127.0.0.1:{port}"
    with pytest.raises(TransportError) as sync_error:
        await asyncio.to_thread(Client(url, "", timeout=5).trace, "0" * 32)
    async with AsyncClient(url, "", timeout=5) as client:
        with pytest.raises(TransportError) as async_error:
            await client.trace("0" * 32)
    for exc in (sync_error.value, async_error.value):
        assert "s3cr3t" not in str(exc) and "s3cr3t" not in repr(exc)


def test_filter_masks_message_args_and_traceback() -> None:
    """SecretFilter masks a key in a record's arguments and in its exception's text."""
    logger = logging.getLogger("atrace.test_secrets")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.addFilter(SecretFilter())
    try:
        try:
            raise ValueError(f"bad header Authorization: Bearer {KEY}")
        except ValueError:
            logger.exception("request with %s failed", KEY)
    finally:
        logger.removeHandler(handler)
    text = handler.format(records[0])
    assert SECRET not in text
    assert "atk_0123456789abcdef_***" in text
    assert "ValueError" in text  # the traceback is still there, masked


# Malformed headers carrying the key: aiohttp's parser refuses each and its message quotes the
# line. One per way the key travels (Authorization, X-API-Key) and fault.
_MALFORMED = [
    f"Authorization : Bearer {KEY}",
    f"Authorization: Bearer {KEY}\x01",
    f"X-API-Key {KEY}",
    f"X-API-Key\x7f: {KEY}",
    f"Content-Length: x{KEY}",
]


@pytest.fixture
def secrets_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of aiohttp and atrace captured, at DEBUG."""
    for name in ("aiohttp", "atrace"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def _serve(app: web.Application, runner: web.AppRunner) -> AsyncIterator[int]:
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_aiohttp_parse_error_log_masked(secrets_logged: pytest.LogCaptureFixture) -> None:
    """aiohttp's own "Error handling request" traceback quoting a malformed header line is
    masked once install_filters() ran."""
    install_filters()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    async for port in _serve(app, web.AppRunner(app, access_log=None)):
        status, _, _ = await raw_request(
            "127.0.0.1", port, f"GET / HTTP/1.1\r\nHost: x\r\n{_MALFORMED[0]}\r\n\r\n".encode()
        )
        assert status == 400
    assert "Error handling request" in secrets_logged.text
    assert SECRET not in secrets_logged.text


async def test_malformed_headers_never_echoed(
    pg_schema: tuple[str, str], secrets_logged: pytest.LogCaptureFixture
) -> None:
    """The collector answers a request with a malformed header carrying a key with a JSON 400
    that does not quote the header, and logs nothing of the key."""
    dsn, schema = pg_schema
    install_filters()
    app = make_app(dsn, schema=schema)
    async for port in _serve(app, CollectorRunner(app, auto_decompress=False, access_log=None)):
        for line in _MALFORMED:
            head = f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode("latin-1")
            status, raw, _ = await raw_request("127.0.0.1", port, head)
            assert status == 400, raw
            assert SECRET.encode() not in raw and b"atk_" not in raw, raw
            assert b'{"error": "malformed ' in raw, raw
    assert SECRET not in secrets_logged.text


async def test_unavailable_database_not_described(
    pg_server: PgServer, pg_schema: tuple[str, str]
) -> None:
    """The 503 answered while PostgreSQL is unreachable says only that: no error class, no
    address of the database."""
    dsn, schema = pg_schema
    async with TCPProxy(pg_server.host, pg_server.port) as proxy:
        app_dsn = proxy.url_for(dsn)
        host, port = proxy.host, proxy.port
        async with CollectorServer(dsn, schema, app_dsn=app_dsn) as server:
            key = await server.create_key("alpha")  # not yet checked: not cached
            proxy.cut()
            answer = await server.request("GET", "/v1/search", key=key)
            assert answer.status == 503, answer
            text = answer.body.decode()
            assert answer.json()["error"].startswith("database unavailable")
            assert "Error" not in text and str(port) not in text and host not in text


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*atrace_command(), *args], capture_output=True, text=True, timeout=120, env=os.environ
    )


@pytest.mark.parametrize(
    "mistyped",
    [
        lambda key: key[:-1],  # the secret cut short
        lambda key: key + "Q",  # one character too many
        lambda key: key[len("atk_0123456789abcdef_") :],  # the secret alone
        lambda key: " " + key.replace("_", "-", 1),  # atk-: a typo in the prefix
    ],
)
async def test_keys_revoke_never_echoes_a_secret(pg_schema: tuple[str, str], mistyped: Any) -> None:
    """`atrace keys revoke` given a mistyped key prints no part of its secret, and revokes
    nothing."""
    dsn, schema = pg_schema
    created = _run("keys", "create", "--dsn", dsn, "--schema", schema, "--project", "alpha")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    secret = key.split("_", 2)[2]
    # "--": a secret may begin with "-" (URL-safe base64), which would read as an option.
    done = _run("keys", "revoke", "--dsn", dsn, "--schema", schema, "--", mistyped(key))
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert secret[:-1] not in output and secret[1:] not in output, output
    listing = _run("keys", "list", "--dsn", dsn, "--schema", schema)
    assert "active" in listing.stdout
    assert secret not in listing.stdout + listing.stderr
