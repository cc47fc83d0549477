"""Scrubbing: the built-in rules over their hits and near misses, in attributes and in text, and
through the pipeline into a sink (on by default, counted, configurable, off)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import atrace
from atrace._pipeline.scrub import Scrubber, luhn, scrub_text, sensitive_key
from atrace._records import COLUMNS
from atrace.testing import MemorySink

# (attribute name, the rule it falls under, or None: left alone)
KEYS = [
    ("password", "password"),
    ("db.password", "password"),
    ("userPassword", "password"),
    ("passwd", "passwd"),
    ("client_secret", "client secret"),
    ("auth_token", "auth token"),
    ("X-Api-Key", "api key"),
    ("apikey", "apikey"),
    ("api_key", "api key"),
    ("Authorization", "authorization"),
    ("http.request.header.cookie", "cookie"),
    ("set-cookie", "set cookie"),
    ("sessionId", "session id"),
    ("sessionid", "sessionid"),
    ("private_key", "private key"),
    ("aws.credentials", "credentials"),
    ("jwt", "jwt"),
    # near misses: no whole word of these is a sensitive one
    ("author", None),
    ("session_count", None),
    ("tokens_used", None),
    ("gen_ai.usage.input_tokens", None),
    ("passage", None),
    ("secretary", None),
    ("keyboard", None),
    ("http.route", None),
]


@pytest.mark.parametrize(("key", "rule"), KEYS)
def test_sensitive_keys(key: str, rule: str | None) -> None:
    assert sensitive_key(key) == rule


CARD = "4111 1111 1111 1111"  # a test Visa number: passes Luhn
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

# (text, what it must become)
TEXTS = [
    (
        "connecting to postgresql://app:hunter2@db:5432/orders",
        "connecting to postgresql://app:[scrubbed: url password]@db:5432/orders",
    ),
    (
        "GET https://api.example.com/v1/items?page=2&access_token=abc123&sort=asc",
        "GET https://api.example.com/v1/items?page=2&access_token=[scrubbed: query]&sort=asc",
    ),
    (
        "sent Authorization: Bearer abcdef123456.xyz",
        "sent Authorization: Bearer [scrubbed: bearer]",
    ),
    (f"token {JWT} rejected", "token [scrubbed: jwt] rejected"),
    (
        "login failed: password=hunter2, user=ann",
        "login failed: password=[scrubbed: password], user=ann",
    ),
    ('config {"api_key": "k-123"}', 'config {"api_key": [scrubbed: api_key]}'),
    (f"charged card {CARD} for 20 EUR", "charged card [scrubbed: card number] for 20 EUR"),
    (
        "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- done",
        "key: [scrubbed: private key] done",
    ),
    # near misses, left as they are
    ("order 4111 1111 1111 1112 shipped", "order 4111 1111 1111 1112 shipped"),  # fails Luhn
    ("tokens_used=512 in 1.5 s", "tokens_used=512 in 1.5 s"),
    ("the author=ann wrote it", "the author=ann wrote it"),
    ("https://example.com/a?page=2&sort=asc", "https://example.com/a?page=2&sort=asc"),
    ("ts 1700000000123456789 done", "ts 1700000000123456789 done"),
    ("http://example.com:8080/path", "http://example.com:8080/path"),
]


@pytest.mark.parametrize(("text", "clean"), TEXTS)
def test_secrets_inside_text(text: str, clean: str) -> None:
    got, n = scrub_text(text)
    assert got == clean
    assert (n > 0) == (text != clean)


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713")
    assert not luhn("4111111111111112") and not luhn("79927398710")


def _row(**values: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = dict.fromkeys(COLUMNS)
    base.update(ts=1, kind=0, level=20, status=0, service="svc")
    base.update(values)
    if isinstance(base["attrs"], dict):
        base["attrs"] = orjson.dumps(base["attrs"])
    return tuple(base[c] for c in COLUMNS)


def test_rows_keep_what_is_not_secret() -> None:
    scrubber = Scrubber()
    attrs = {
        "user": "ann",
        "password": "hunter2",
        "headers": {"Authorization": "Basic YW5uOmh1bnRlcjI=", "accept": "json"},
        "credentials": {"user": "ann", "key": "k"},
        "url.full": "https://x.example/cb?code=1&token=t0k3n",
        "retry": True,
        "session_count": 3,
    }
    plain = _row(attrs={"user": "ann", "n": 1}, message="hello")
    rows = scrubber.rows(
        [plain, _row(attrs=attrs, message="db at postgresql://u:pw@h/db", error_message="pwd=x")]
    )
    assert rows[0] is plain  # nothing to scrub: the same row object
    got = orjson.loads(rows[1][COLUMNS.index("attrs")])
    assert got == {
        "user": "ann",
        "password": "[scrubbed: password]",
        "headers": {"Authorization": "[scrubbed: authorization]", "accept": "json"},
        "credentials": {"user": "[scrubbed: credentials]", "key": "[scrubbed: credentials]"},
        "url.full": "https://x.example/cb?code=1&token=[scrubbed: query]",
        "retry": True,
        "session_count": 3,
    }
    assert rows[1][COLUMNS.index("message")] == "db at postgresql://u:[scrubbed: url password]@h/db"
    assert rows[1][COLUMNS.index("error_message")] == "pwd=[scrubbed: pwd]"
    assert scrubber.count == 7


def test_more_words_and_a_keep_callback() -> None:
    more = Scrubber(words=["pin", "tax_id"])
    (row,) = more.rows([_row(attrs={"card.pin": "1234", "TaxId": "X9", "pinned": "yes"})])
    assert orjson.loads(row[COLUMNS.index("attrs")]) == {
        "card.pin": "[scrubbed: pin]",
        "TaxId": "[scrubbed: taxid]",
        "pinned": "yes",
    }
    keeping = Scrubber(keep=lambda key, value: key == "token_count")
    (row,) = keeping.rows([_row(attrs={"token_count": 5, "token": "abc"})])
    assert orjson.loads(row[COLUMNS.index("attrs")]) == {
        "token_count": 5,
        "token": "[scrubbed: token]",
    }


async def test_through_the_pipeline(memory_sink: MemorySink) -> None:
    """With scrub=True what reaches a sink is scrubbed and counted in metrics(); the emit call
    kept its values (scrubbing runs in the flusher)."""
    atrace.configure(service="svc", sink=memory_sink, flush_interval=3600, scrub=True)
    atrace.info("login", user="ann", password="hunter2")
    with atrace.span("call", url="https://h/x?api_key=abc&q=1"):
        pass
    assert await atrace.aflush()
    log = memory_sink.logs()[0]
    assert log["attrs"] == {"user": "ann", "password": "[scrubbed: password]"}
    span = memory_sink.spans()[0]
    assert span["attrs"]["url"] == "https://h/x?api_key=[scrubbed: query]&q=1"
    assert atrace.metrics().scrubbed == 2


async def test_off_and_bad_settings(memory_sink: MemorySink, monkeypatch: Any) -> None:
    """Off by default (and with ATRACE_SCRUB=0); bad settings are a ConfigError."""
    monkeypatch.setenv("ATRACE_SCRUB", "0")
    atrace.configure(service="svc", sink=memory_sink, flush_interval=3600)
    atrace.info("login", password="hunter2")
    assert await atrace.aflush()
    assert memory_sink.logs()[0]["attrs"] == {"password": "hunter2"}
    assert atrace.metrics().scrubbed == 0
    with pytest.raises(atrace.ConfigError, match="scrub"):
        atrace.configure(scrub="yes")
    with pytest.raises(atrace.ConfigError, match="scrub"):
        atrace.configure(scrub=["", "pin"])
    monkeypatch.setenv("ATRACE_SCRUB", "maybe")
    with pytest.raises(atrace.ConfigError, match="ATRACE_SCRUB"):
        atrace.configure()
