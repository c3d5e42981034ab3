"""The gateway's client for its engines' JSON endpoints (a POST, a whole JSON answer back): kept-alive HTTP/1.1
connections per engine, responses parsed by httptools (the parser uvicorn serves the gateway with). It does one
thing, on loopback, to an engine the gateway started, so it is small: measured 0.58 ms of CPU per forwarded
request against aiohttp's 0.95 on the same machine (benchmarks/gateway_overhead.py, docs/benchmarks.md).
Streams still go through aiohttp.

Failures come back as one of three kinds, which the gateway's breaker and retry logic tell apart:
`ConnectFailed` (nothing was sent: retrying is safe), `TimedOut`, `Broken` (the connection failed after the
request went out, or the answer could not be parsed)."""
from __future__ import annotations

import asyncio
import collections
import time
from urllib.parse import urlsplit

import httptools

IDLE_S = 4.0   # a kept-alive connection idle longer is not reused: cpp-httplib (llama-server) closes them at 5 s


class UpstreamError(Exception):
    kind = "transport"


class ConnectFailed(UpstreamError):
    kind = "connect"


class TimedOut(UpstreamError):
    kind = "timeout"


class Broken(UpstreamError):
    kind = "transport"


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answer: asyncio.Future | None = None
        self.idle_since = time.monotonic()
        self.got_bytes = False

    def connection_made(self, transport):
        self.transport = transport

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.body, self.got_bytes = 0, [], False
        self.answer = loop.create_future()
        self.transport.write(data)
        return self.answer

    def data_received(self, data: bytes):
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(Broken(f"unparsable answer: {e}"))

    def connection_lost(self, exc):
        self.closed = True
        self._fail(Broken("the engine closed the connection" + (f" ({exc})" if exc else "")))

    def _fail(self, err: Exception):
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(err)

    # httptools callbacks
    def on_headers_complete(self):
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes):
        self.body.append(chunk)

    def on_message_complete(self):
        if not self.parser.should_keep_alive():
            self.closed = True
            self.transport.close()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.status, b"".join(self.body)))


class Pool:
    """Kept-alive connections to one engine (`http://host:port`)."""

    def __init__(self, url: str, connect_timeout_s: float = 2.0):
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream URL {url!r}: only http://host:port is supported")
        self.host, self.port = u.hostname, u.port or 80
        self.connect_timeout_s = connect_timeout_s
        self.idle: collections.deque[_Connection] = collections.deque()
        self.head = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n".encode()

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port),
                                             min(self.connect_timeout_s, timeout_s))
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as e:
            raise ConnectFailed(f"{self.host}:{self.port}: {e.strerror or e}") from None
        return conn

    def _reusable(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()   # the most recently used: warm, least likely to have been closed
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.transport.close()
        return None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None,
                   timeout_s: float = 60.0) -> tuple[int, bytes]:
        """(status, body) of one POST; raises ConnectFailed, TimedOut or Broken."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        data = b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self.head, extra, len(body),
                                                                            body)
        conn = self._reusable()
        for fresh in ((False, True) if conn else (True,)):
            if fresh:
                conn = await self._connect(deadline - loop.time())
            answer = conn.send(data, loop)
            try:
                status, raw = await asyncio.wait_for(answer, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                conn._fail(TimedOut("timed out"))
                raise TimedOut(f"no answer from {self.host}:{self.port} in {timeout_s:g} s") from None
            except Broken:
                if not fresh and not conn.got_bytes:
                    continue   # a kept-alive connection the engine had closed: once more on a new one
                raise
            except asyncio.CancelledError:   # the client went away: this connection is mid-answer, not reusable
                conn._fail(Broken("cancelled"))
                raise
            if not conn.closed:
                conn.idle_since = time.monotonic()
                self.idle.append(conn)
            return status, raw
        raise Broken("unreachable")  # pragma: no cover

    def close(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()
