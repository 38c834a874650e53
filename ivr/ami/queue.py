"""A bounded event queue that never makes its producer wait.

The AMI reader runs in the transport's ``data_received`` callback: if it had to wait for a
slow consumer (a stalled Redis writer, a long resync), the socket would stop being read,
Asterisk would buffer, Ping replies would queue behind events and the client would end up
declaring a healthy PBX dead. So ``put`` never blocks: when the queue is full the **oldest**
event is dropped. Oldest, because the consumer is behind anyway and live state is best
rebuilt from the freshest events plus a resync (``QueueStatus``), while the newest events
are those a supervisor's dashboard shows now. Every drop is counted so it is visible on
``/metrics`` and in the logs, never silent.

The queue also measures lag: how long each event sat before a consumer took it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DropOldestQueue"]

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """FIFO with a fixed capacity; ``put`` drops the oldest item when full.

    ``get`` waits for an item; ``close`` wakes waiting consumers, which then get the items
    still queued and finally :class:`EOFError`.
    """

    def __init__(self, maxsize: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._clock = clock
        self._items: deque[tuple[float, T]] = deque()
        self._waiter: asyncio.Event | None = None
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.max_lag_s = 0.0
        self.last_lag_s = 0.0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> bool:
        """Queue ``item``; return False when an older item had to be dropped for it."""
        if self._closed:
            raise RuntimeError("put on a closed queue")
        self.received += 1
        kept = True
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
            kept = False
        self._items.append((self._clock(), item))
        if self._waiter is not None:
            self._waiter.set()
        return kept

    def get_nowait(self) -> T:
        """The oldest item; :class:`asyncio.QueueEmpty` when none (EOFError once closed)."""
        if not self._items:
            if self._closed:
                raise EOFError("queue closed")
            raise asyncio.QueueEmpty
        queued_at, item = self._items.popleft()
        lag = self._clock() - queued_at
        self.last_lag_s = lag
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        return item

    async def get(self) -> T:
        """Wait for the oldest item; raise :class:`EOFError` once closed and empty."""
        while True:
            try:
                return self.get_nowait()
            except asyncio.QueueEmpty:
                pass
            if self._waiter is None:
                self._waiter = asyncio.Event()
            self._waiter.clear()
            await self._waiter.wait()

    def close(self) -> None:
        """No more items will come; consumers drain what is left, then get EOFError."""
        self._closed = True
        if self._waiter is not None:
            self._waiter.set()

    def reopen(self) -> None:
        self._closed = False
