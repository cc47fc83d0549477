"""ASGI apps the process-end tests serve in a subprocess (uvicorn, gunicorn, hypercorn).

atrace is configured from the environment the test sets (``ATRACE_SINK``, ``ATRACE_SCHEMA``,
``ATRACE_FLUSH_INTERVAL``): with a long flush interval, only the flush at process end can have
written what the requests emitted. ``GET /r/<n>`` logs ``handled <n>`` inside its server span.
"""

from __future__ import annotations

from typing import Any

import atrace
from atrace.integrations.asgi import AtraceMiddleware

atrace.configure(service="process-end")

Scope = dict[str, Any]


async def _respond(scope: Scope, send: Any) -> None:
    path = scope["path"]
    atrace.info(f"handled {path.rsplit('/', 1)[-1]}")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _with_lifespan(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                atrace.info("lifespan shutdown")  # emitted by the app's own shutdown
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _respond(scope, send)


async def _without_lifespan(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']!r}")
    await _respond(scope, send)


# An app that speaks the lifespan protocol, and one that refuses it.
app = AtraceMiddleware(_with_lifespan)
bare = AtraceMiddleware(_without_lifespan)
