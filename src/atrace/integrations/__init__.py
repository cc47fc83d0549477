"""Integrations with web frameworks and HTTP clients.

Each lives in its own module and imports its framework only when imported itself:

- :mod:`atrace.integrations.asgi`: ``AtraceMiddleware`` for any ASGI app (Starlette, FastAPI...).
- :mod:`atrace.integrations.wsgi`: ``AtraceWSGIMiddleware`` for any WSGI app (Flask, Django...).
- :mod:`atrace.integrations.aiohttp`: a server ``middleware`` and a client ``trace_config()``.
- :mod:`atrace.integrations.httpx`: event hooks and transports for ``httpx`` clients.
- :mod:`atrace.integrations.logging`: ``AtraceHandler``, the stdlib ``logging`` bridge.

Server spans are named ``"GET /items/{id}"`` when the framework exposes the matched route
template, else by the method alone (``"GET"``), which keeps span names few; the concrete path is
in the ``url.path`` attribute. A handler may set ``http.route`` on the current span itself
(``atrace.current_span().set(**{"http.route": "/items/{id}"})``): the span is then named after it.
"""

__all__ = ()
