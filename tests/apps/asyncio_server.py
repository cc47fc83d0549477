"""A plain ``asyncio.run()`` program serving an ASGI app over HTTP/1.1, with no signal handling.

Usage: ``python asyncio_server.py PORT``. The app is :data:`process_end_app.bare` behind a
minimal server (one request per connection); the program ends only when a signal ends it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from process_end_app import bare


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:  # a readiness probe: connected, then closed
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [
        (name.strip().lower().encode(), value.strip().encode())
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": target.split("?", 1)[0],
        "raw_path": target.encode(),
        "query_string": target.partition("?")[2].encode(),
        "root_path": "",
        "headers": headers,
        "client": writer.get_extra_info("peername")[:2],
        "server": writer.get_extra_info("sockname")[:2],
    }
    status = 500
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await bare(scope, receive, send)
    payload = b"".join(body)
    head = f"HTTP/1.1 {status} OK\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()
    writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
