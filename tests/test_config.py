"""Configuration: validation naming field and value, environment variables, immutability."""

from __future__ import annotations

import math
import os
import pathlib

import pytest

import atrace
from atrace.config import (
    ENV,
    Config,
    check_int,
    check_number,
    check_schema,
    env,
    from_environment,
    parse_resource_attributes,
)
from atrace.errors import InternalError


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("batch_size", 0),
            ("batch_size", "10"),
            ("capacity", -1),
            ("flush_interval", 0),
            ("policy", "drop_everything"),
            ("service", ""),
            ("schema", "drop table;"),
            ("max_message_length", 1),
        ],
    )
    def test_invalid_value_names_field_and_value(self, field: str, value: object) -> None:
        """An invalid setting raises ConfigError whose message names the field and the value."""
        with pytest.raises(atrace.ConfigError) as info:
            Config(**{field: value})
        assert info.value.field == field
        assert field in str(info.value) and repr(value) in str(info.value)

    def test_config_error_is_value_error(self) -> None:
        """ConfigError is also a ValueError, so generic handlers catch it."""
        with pytest.raises(ValueError):
            atrace.configure(policy="nope")

    def test_immutable(self) -> None:
        """A Config cannot be changed after creation; replace() makes a validated copy."""
        cfg = Config(service="a")
        with pytest.raises(AttributeError):
            cfg.service = "b"  # type: ignore[misc]
        assert cfg.replace(service="b").service == "b"
        with pytest.raises(atrace.ConfigError):
            cfg.replace(batch_size=-5)

    def test_unknown_sink_url(self) -> None:
        """A sink URL with an unknown scheme is refused at configure time."""
        with pytest.raises(atrace.ConfigError, match="sink"):
            atrace.configure(sink="ftp://example")

    def test_batch_size_capped_by_capacity(self) -> None:
        """A batch can never be larger than the ring."""
        assert Config(capacity=100, batch_size=1000).batch_size == 100


class TestConfigValue:
    def test_frozen_keyword_only_value(self) -> None:
        """Config is a frozen, slotted value taking keywords only, equal and hashed by value."""
        assert not hasattr(Config(), "__dict__")
        assert Config(service="a") == Config(service="a") != Config(service="b")
        assert hash(Config(service="a")) == hash(Config(service="a"))
        with pytest.raises(TypeError):
            Config("svc")  # type: ignore[misc]
        with pytest.raises(AttributeError, match="immutable"):
            Config().capacity = 5  # type: ignore[misc]
        with pytest.raises(AttributeError, match="immutable"):
            del Config().capacity  # type: ignore[misc]

    def test_copies_are_validated_and_local(self) -> None:
        """replace(), copy and pickle rebuild through the constructor: values are checked again
        and the pid is the process's own (a Config unpickled in a child is the child's)."""
        import copy
        import os
        import pickle

        cfg = Config(service="svc", attributes={"team": "pay"}, batch_size=10)
        object.__setattr__(cfg, "pid", -1)  # as if it had been made in another process
        for made in (pickle.loads(pickle.dumps(cfg)), copy.copy(cfg), cfg.replace()):
            assert made == cfg and made.pid == os.getpid()
            assert made.attributes == {"team": "pay"}
        assert cfg.replace(batch_size=20).batch_size == 20
        with pytest.raises(atrace.ConfigError, match="batch_size"):
            cfg.replace(batch_size=0)

    def test_values_are_normalised(self) -> None:
        """Sinks become a tuple, attributes a read-only copy, numbers floats, a path a string."""
        given = {"team": "pay"}
        cfg = Config(
            sinks=["console"],
            attributes=given,
            flush_interval=2,
            spill_dir=pathlib.Path("/tmp/spill"),
        )
        given["team"] = "changed"
        assert cfg.sinks == ("console",)
        assert cfg.attributes == {"team": "pay"}
        with pytest.raises(TypeError):
            cfg.attributes["x"] = 1  # type: ignore[index]
        assert isinstance(cfg.flush_interval, float) and cfg.flush_interval == 2.0
        assert cfg.spill_dir == "/tmp/spill"
        assert Config(attributes=None).attributes == {}  # type: ignore[arg-type]

    def test_replace_validates_and_takes_this_process(self) -> None:
        """replace() keeps the other fields, validates the new ones and sets host and pid anew."""
        cfg = Config(service="a", capacity=500)
        copy = cfg.replace(service="b")
        assert (copy.service, copy.capacity, copy.pid) == ("b", 500, os.getpid())
        with pytest.raises(atrace.ConfigError, match="capacity"):
            cfg.replace(capacity=0)

    def test_equal_by_value_and_hashable(self) -> None:
        """Two Configs of the same settings are equal and hash alike, attributes and all."""
        a = Config(service="s", attributes={"k": "v"})
        b = Config(service="s", attributes={"k": "v"})
        assert a == b and hash(a) == hash(b)
        assert a != b.replace(service="t")

    def test_repr_shows_the_settings_only(self) -> None:
        """The repr names every argument, and neither host nor pid."""
        text = repr(Config(service="svc"))
        assert text.startswith("Config(service='svc', environment=None, sinks=()")
        assert "host=" not in text and "pid=" not in text


class TestChecks:
    def test_check_int_bounds_and_message(self) -> None:
        """check_int returns a value in bounds and names field, value and bounds otherwise."""
        assert check_int("n", 5, 1, 10) == 5
        assert check_int("n", 10**12, 1) == 10**12
        with pytest.raises(atrace.ConfigError, match=r"^n=11: expected an integer from 1 to 10$"):
            check_int("n", 11, 1, 10)
        with pytest.raises(atrace.ConfigError, match=r"^n=0: expected an integer >= 1$"):
            check_int("n", 0, 1)
        for bad in (True, 2.0, "2", None):
            with pytest.raises(atrace.ConfigError) as info:
                check_int("n", bad, 1)
            assert info.value.field == "n" and info.value.value is bad

    def test_check_number_bounds_and_message(self) -> None:
        """check_number returns a float in bounds and refuses bools, strings and NaN."""
        assert check_number("t", 2, 0, 10) == 2.0 and isinstance(check_number("t", 2, 0), float)
        with pytest.raises(atrace.ConfigError, match=r"^t=-1: expected a number >= 0$"):
            check_number("t", -1, 0)
        with pytest.raises(atrace.ConfigError, match=r"expected a number from 0.001 to 3600.0$"):
            check_number("t", 0, 0.001, 3600.0)
        for bad in (False, "1", math.nan):
            with pytest.raises(atrace.ConfigError):
                check_number("t", bad, 0, 10)

    def test_check_schema(self) -> None:
        """A lowercase SQL identifier passes; anything else names the field and the value."""
        assert check_schema("atrace_2") == "atrace_2"
        for bad in ("Atrace", "drop table;", "x" * 64, "", 5):
            with pytest.raises(atrace.ConfigError) as info:
                check_schema(bad)
            assert info.value.field == "schema" and info.value.value == bad
        with pytest.raises(atrace.ConfigError, match=r"^--schema="):
            check_schema("A", "--schema")


class TestEnvironment:
    def test_every_variable_has_a_one_line_description(self) -> None:
        """ENV names ATRACE_* and OTEL_* variables only, each with one line saying what it sets."""
        assert ENV
        for name, description in ENV.items():
            assert name.startswith(("ATRACE_", "OTEL_")) and name.isupper()
            assert description.strip() and "\n" not in description and len(description) < 90

    def test_env_empty_or_blank_means_unset(self) -> None:
        """env() strips a value, and an empty or blank one is None, as if unset."""
        assert env("ATRACE_DSN", {"ATRACE_DSN": " postgresql://x "}) == "postgresql://x"
        assert env("ATRACE_DSN", {"ATRACE_DSN": ""}) is None
        assert env("ATRACE_DSN", {"ATRACE_DSN": "  "}) is None
        assert env("ATRACE_DSN", {}) is None

    def test_env_reads_the_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a mapping, env() reads the process environment."""
        monkeypatch.setenv("ATRACE_URL", "http://collector:4319")
        assert env("ATRACE_URL") == "http://collector:4319"

    def test_env_refuses_an_unlisted_name(self) -> None:
        """Reading a variable missing from ENV is a bug in atrace, reported as such."""
        with pytest.raises(InternalError, match="ATRACE_NOT_A_SETTING"):
            env("ATRACE_NOT_A_SETTING", {"ATRACE_NOT_A_SETTING": "1"})

    def test_spill_schema_and_lengths(self) -> None:
        """The spill, schema and message-length variables reach their fields."""
        kw = from_environment(
            {
                "ATRACE_SCHEMA": "obs",
                "ATRACE_SPILL_DIR": "/var/spill",
                "ATRACE_SPILL_MAX_BYTES": "1000",
                "ATRACE_MAX_MESSAGE_LENGTH": "100",
                "ATRACE_SHUTDOWN_TIMEOUT": "2.5",
            }
        )
        assert kw == {
            "schema": "obs",
            "spill_dir": "/var/spill",
            "spill_max_bytes": 1000,
            "max_message_length": 100,
            "shutdown_timeout": 2.5,
        }

    def test_atrace_variables(self) -> None:
        """ATRACE_* variables set the matching fields."""
        kw = from_environment(
            {
                "ATRACE_SERVICE": "svc",
                "ATRACE_ENVIRONMENT": "prod",
                "ATRACE_SINK": "console, postgresql://x/y",
                "ATRACE_BATCH_SIZE": "123",
                "ATRACE_FLUSH_INTERVAL": "0.5",
                "ATRACE_CAPACITY": "999",
                "ATRACE_POLICY": "block",
            }
        )
        cfg = Config(**kw)
        assert (cfg.service, cfg.environment) == ("svc", "prod")
        assert cfg.sinks == ("console", "postgresql://x/y")
        assert (cfg.batch_size, cfg.flush_interval, cfg.capacity, cfg.policy) == (
            123,
            0.5,
            999,
            "block",
        )

    def test_otel_variables(self) -> None:
        """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply; other keys become attributes."""
        kw = from_environment(
            {
                "OTEL_SERVICE_NAME": "checkout",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,team=pay%20ments",
            }
        )
        assert kw["service"] == "checkout"
        assert kw["environment"] == "staging"
        assert kw["attributes"] == {"team": "pay ments"}

    def test_atrace_wins_over_otel_and_empty_means_unset(self) -> None:
        """ATRACE_SERVICE beats OTEL_SERVICE_NAME; an empty variable counts as unset."""
        assert from_environment({"ATRACE_SERVICE": "a", "OTEL_SERVICE_NAME": "b"})["service"] == "a"
        assert from_environment({"ATRACE_SERVICE": "", "OTEL_SERVICE_NAME": "b"})["service"] == "b"
        assert "batch_size" not in from_environment({"ATRACE_BATCH_SIZE": ""})

    def test_bad_variable_names_the_variable(self) -> None:
        """A malformed number in a variable raises ConfigError naming that variable."""
        with pytest.raises(atrace.ConfigError, match="ATRACE_BATCH_SIZE"):
            from_environment({"ATRACE_BATCH_SIZE": "lots"})

    def test_service_name_from_resource(self) -> None:
        """service.name inside OTEL_RESOURCE_ATTRIBUTES names the service."""
        assert from_environment({"OTEL_RESOURCE_ATTRIBUTES": "service.name=x"})["service"] == "x"

    def test_malformed_resource_attributes(self) -> None:
        """A pair without '=' is refused with the variable named."""
        with pytest.raises(atrace.ConfigError, match="OTEL_RESOURCE_ATTRIBUTES"):
            parse_resource_attributes("novalue")

    def test_configure_reads_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """configure() picks up the environment for what it is not given."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
        cfg = atrace.configure(sink="console", batch_size=7)
        assert cfg.service == "from-env" and cfg.batch_size == 7
        assert atrace.get_config() is cfg
