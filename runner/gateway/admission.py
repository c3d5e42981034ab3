"""Admission control: at most `max_in_flight` requests run; up to `max_queue` more wait in FIFO order, each
at most `queue_timeout_s`; beyond that a request is refused at once. Nothing queues without bound. A streamed
request holds its slot until its last byte is sent or its client goes away, not just until the engine answers."""
from __future__ import annotations

import asyncio
import collections
import contextlib


class Rejected(Exception):
    """Refused: `status` 429 (queue full, with retry_after seconds) or 503 (waited too long)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        self.status, self.retry_after = status, retry_after
        super().__init__(message)


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, queue_timeout_s: float):
        self.max_in_flight, self.max_queue, self.queue_timeout_s = max_in_flight, max_queue, queue_timeout_s
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self.waiters)

    def _release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over: in_flight stays the same
                return
        self.in_flight -= 1

    async def acquire(self) -> None:
        """A slot now, or after waiting in the queue; Rejected when the queue is full or the wait runs out.
        Whoever acquires must release() exactly once (slot() does it for a block; a stream when it ends)."""
        if self.in_flight < self.max_in_flight and not self.waiters:
            self.in_flight += 1
            return
        if len(self.waiters) >= self.max_queue:
            raise Rejected(429, f"server busy: {self.in_flight} requests in flight and {len(self.waiters)} "
                                f"queued (limits {self.max_in_flight} and {self.max_queue})",
                           retry_after=max(1, round(self.queue_timeout_s / 2)))
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if fut.done():  # the slot arrived just as the wait ended: give it on
                self._release()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise Rejected(503, f"waited {self.queue_timeout_s:g} s in the queue without a free slot",
                           retry_after=max(1, round(self.queue_timeout_s))) from None
        except asyncio.CancelledError:  # client went away while queued
            if fut.done():
                self._release()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    def release(self) -> None:
        self._release()

    @contextlib.asynccontextmanager
    async def slot(self):
        await self.acquire()
        try:
            yield
        finally:
            self._release()
