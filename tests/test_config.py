"""Configuration: validation naming field and value, environment variables, immutability."""

from __future__ import annotations

import pytest

import atrace
from atrace.config import Config, from_environment, parse_resource_attributes


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


class TestEnvironment:
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
