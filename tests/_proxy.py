"""A TCP proxy that puts real network faults between a PostgreSQL client and its server."""

from __future__ import annotations

import asyncio
import re
import struct
import urllib.parse
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

__all__ = ("TCPProxy",)

_CHUNK = 64 * 1024

_PROTOCOL_MAJOR = 3
_CANCEL_REQUEST = 80877102
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
# A real startup packet is a few hundred bytes; a larger "length" means the stream is not plain
# PostgreSQL any more (a TLS ClientHello after the server said yes to SSLRequest reads as ~369 MB).
_MAX_STARTUP = 10_000
_COMMIT = re.compile(rb"\bcommit\b", re.IGNORECASE)


class _FrontendScanner:
    """Follows one connection's client→server PostgreSQL messages to spot the one that commits."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0
        self._startup = True
        self._enabled = True
        self._commit_parsed = False

    def feed(self, data: bytes) -> bool:
        """Take the next chunk of the stream; True if it carries a message that commits."""
        if not self._enabled:
            return False
        if self._skip:
            # Bodies we do not inspect are counted past, not buffered.
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        buf = self._buf
        buf += data
        found = False
        while self._enabled:
            if self._startup:
                # Startup-phase packets have no type byte: int32 length, int32 request code.
                if len(buf) < 8:
                    break
                length, code = struct.unpack_from("!ii", buf)
                if code >> 16 == _PROTOCOL_MAJOR:
                    self._startup = False
                elif code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    # A CancelRequest connection carries nothing else; anything unknown is not ours.
                    self._enabled = False
                    break
                if not 8 <= length <= _MAX_STARTUP:
                    self._enabled = False
                    break
                self._consume(length)
                continue
            if len(buf) < 5:
                break
            kind = buf[0]
            (length,) = struct.unpack_from("!i", buf, 1)
            if length < 4:
                self._enabled = False
                break
            total = 1 + length
            if kind in b"QP":
                if len(buf) < total:
                    break
                body = bytes(buf[5:total])
                del buf[:total]
                if kind == ord("Q"):
                    found = found or bool(_COMMIT.search(body.split(b"\0", 1)[0]))
                else:
                    # Parse = statement name, NUL, SQL, NUL, parameter types.
                    fields = body.split(b"\0", 2)
                    if len(fields) > 1 and _COMMIT.search(fields[1]):
                        self._commit_parsed = True
            else:
                if kind == ord("E") and self._commit_parsed:
                    # A parsed COMMIT commits only when executed; asyncpg parses (and waits
                    # for the answer) before it binds and executes in a later write.
                    self._commit_parsed = False
                    found = True
                self._consume(total)
        return found

    def _consume(self, n: int) -> None:
        if n <= len(self._buf):
            del self._buf[:n]
        else:
            self._skip = n - len(self._buf)
            self._buf.clear()


class _Link:
    """One client connection, its server connection, and the tasks that pump between them."""

    __slots__ = ("client", "closed", "commit_sent", "paired", "scanner", "server", "tasks")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.scanner = _FrontendScanner()
        self.closed = False
        self.paired = False
        self.commit_sent = False


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TCPProxy:
    """Forwards TCP between clients and ``target_host:target_port``, with faults on demand.

    Faults take effect at once, on open connections as well as new ones: :meth:`cut` /
    :meth:`restore`, :meth:`slow`, :meth:`pause` / :meth:`resume` and the one-shot
    :meth:`cut_after_commit`. Counters: ``connections`` (accepted, refused ones included),
    ``refused``, ``active`` (open client/server pairs), ``bytes_up`` (client→server),
    ``bytes_down`` and ``commits_cut``.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.host = ""
        self.port = 0
        self.connections = 0
        self.refused = 0
        self.active = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.commits_cut = 0
        self._server: asyncio.Server | None = None
        self._started = False
        self._stopped = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._refusing = False
        self._paused = False
        self._latency = 0.0
        self._commit_armed = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``listen_host`` at a free port, then published as ``.host`` and ``.port``."""
        if self._started:
            raise RuntimeError("TCPProxy.start() called twice")
        self._started = True
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """Stop listening, abort every connection and wait for every task; safe to repeat."""
        self._stopped = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            self._close(link, abort=True)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> TCPProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def url_for(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's; user, path, query kept."""
        if not self.port:
            raise RuntimeError("TCPProxy.url_for() needs a started proxy")
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"url_for() takes a postgresql:// or postgres:// URL, not {dsn!r}")
        userinfo, _, _ = parts.netloc.rpartition("@")
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        query = parts.query
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key in ("host", "port") for key, _ in pairs):
            # libpq and asyncpg let host/port in the query string override the netloc, which
            # would send the client straight past the proxy.
            query = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in ("host", "port")])
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The proxy's tasks that have not finished yet."""
        return frozenset(self._tasks)

    # -- faults ----------------------------------------------------------------------------------

    def cut(self) -> None:
        """Abort every open connection pair and refuse new connections until :meth:`restore`."""
        self._refusing = True
        for link in list(self._links):
            self._close(link, abort=True)

    def restore(self) -> None:
        """Accept and forward connections normally again."""
        self._refusing = False

    def slow(self, latency: float) -> None:
        """Hold every forwarded chunk, both ways, ``latency`` seconds after it arrives; 0 undoes."""
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        self._latency = float(latency)
        self._notify()

    def pause(self) -> None:
        """Stop forwarding both ways; connections stay open and their data waits in the proxy."""
        self._paused = True

    def resume(self) -> None:
        """Forward again everything :meth:`pause` held, then carry on normally."""
        self._paused = False
        self._notify()

    def cut_after_commit(self) -> None:
        """Let the next COMMIT reach the server, then drop its answer and abort that connection.

        The transaction is committed but its client only sees a broken connection: the case an
        at-least-once writer must survive without duplicating or losing work. One-shot.
        """
        self._commit_armed = True

    # -- forwarding ------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback rather than a coroutine, so that start_server makes no task of its
        # own: every task of the proxy is one that stop() knows about.
        self.connections += 1
        if self._refusing or self._stopped:
            self.refused += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        link.tasks.append(self._spawn(self._serve(link, reader), "serve"))

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            server_reader, server = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            self._close(link, abort=True)
            return
        link.server = server
        link.paired = True
        self.active += 1
        link.tasks.append(self._spawn(self._pump_down(link, server_reader), "down"))
        await self._pump_up(link, client_reader)

    async def _pump_up(self, link: _Link, reader: asyncio.StreamReader) -> None:
        assert link.server is not None
        loop = asyncio.get_running_loop()
        abort = True
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    abort = False
                    break
                await self._hold(loop.time())
                if link.scanner.feed(data) and self._commit_armed:
                    self._commit_armed = False
                    # Set before the write: the answer cannot overtake a synchronous flag.
                    link.commit_sent = True
                link.server.write(data)
                self.bytes_up += len(data)
                await link.server.drain()
        except OSError:
            pass
        finally:
            self._close(link, abort=abort)

    async def _pump_down(self, link: _Link, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        abort = True
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    abort = False
                    break
                if link.commit_sent:
                    # The server answered, so the COMMIT is done; the client must never hear it.
                    self.commits_cut += 1
                    break
                await self._hold(loop.time())
                link.client.write(data)
                self.bytes_down += len(data)
                await link.client.drain()
        except OSError:
            pass
        finally:
            self._close(link, abort=abort)

    async def _hold(self, arrived: float) -> None:
        """Wait while paused and until ``arrived + latency``, re-reading both on every change."""
        loop = asyncio.get_running_loop()
        while True:
            timeout: float | None = None
            if not self._paused:
                timeout = arrived + self._latency - loop.time()
                if timeout <= 0:
                    return
            # A future and a timer rather than wait_for(): no hidden task per held chunk.
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)
                if timer is not None:
                    timer.cancel()

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            _wake(waiter)

    def _close(self, link: _Link, *, abort: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        if link.paired:
            self.active -= 1
        for writer in (link.client, link.server):
            if writer is None:
                continue
            if abort:
                writer.transport.abort()
            else:
                # A clean EOF from one peer: close the other after what is already queued for it.
                writer.close()
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        for task in link.tasks:
            if task is not current:
                task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None], role: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"TCPProxy:{self.port}:{role}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Expected network errors are handled in the pumps; anything else is a bug in the
            # proxy, reported now rather than whenever the task happens to be collected.
            task.get_loop().call_exception_handler(
                {"message": f"{task.get_name()} failed", "exception": exc, "task": task}
            )
