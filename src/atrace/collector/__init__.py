"""The atrace collector: an aiohttp service that ingests atrace batches and OTLP into PostgreSQL,
answers queries and streams a live tail. ``atrace serve`` runs it; ``make_app`` builds it.

The names load on first use: the command line's views share the query modules inside this
package and must not pull in aiohttp.
"""

from typing import TYPE_CHECKING, Any

__all__ = (
    "DEFAULT_LIMITS",
    "Limits",
    "create_key",
    "list_keys",
    "make_app",
    "make_runner",
    "revoke_key",
    "serve",
)

if TYPE_CHECKING:
    from ._app import make_app, make_runner, serve
    from ._auth import create_key, list_keys, revoke_key
    from ._limits import DEFAULT_LIMITS, Limits

_HOMES = {
    "DEFAULT_LIMITS": "_limits",
    "Limits": "_limits",
    "create_key": "_auth",
    "list_keys": "_auth",
    "make_app": "_app",
    "make_runner": "_app",
    "revoke_key": "_auth",
    "serve": "_app",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'atrace.collector' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
