"""How many parts of one transfer to keep in flight, found by measuring.

Over a link with latency, one request at a time leaves the link idle while each answer travels back: a
transfer needs about rate × round trip bytes in flight. DLM does not know either, so it measures, as
a sender probing a path does: it starts with one request in flight and, each time as many requests as
are allowed have finished, compares the rate they made with the best so far. While one more request
in flight raised the rate by a tenth or more, it allows one more (up to ``most``, the memory the
caller may spend); the first time it did not, it goes back one and stays there. On a link with no
latency to hide the window stays small; on a long, fat one it opens until the link is full.
"""

import asyncio
import time

# A window must beat the best rate so far by this much to open further.
GAIN = 1.1


class Window:
    def __init__(self, most: int, *, start: int = 1) -> None:
        self.most = max(1, most)
        self.size = max(1, min(start, self.most))
        self.largest = self.size  # the most that were ever allowed at once (what memory it cost)
        self._in_flight = 0
        self._room = asyncio.Event()
        self._best: float | None = None
        self._settled = self.size >= self.most
        self._bytes = 0
        self._finished = 0
        self._since = time.monotonic()

    async def acquire(self) -> None:
        """Wait for room for one more request in flight, and take it."""
        while self._in_flight >= self.size:
            self._room.clear()
            await self._room.wait()
        self._in_flight += 1

    def release(self, sent: int) -> None:
        """A request finished, having moved ``sent`` bytes (0 for one that failed). Not a coroutine: it
        is called from ``finally`` blocks, cancelled ones too."""
        self._in_flight -= 1
        self._measure(sent)
        self._room.set()

    def _measure(self, sent: int) -> None:
        if self._settled:
            return
        self._bytes += sent
        self._finished += 1
        if self._finished < self.size:
            return
        now = time.monotonic()
        rate = self._bytes / max(now - self._since, 1e-9)
        if self._best is None or rate >= self._best * GAIN:
            self._best = rate
            if self.size < self.most:
                self.size += 1
                self.largest = max(self.largest, self.size)
            else:
                self._settled = True
        else:
            self.size = max(1, self.size - 1)
            self._settled = True
        self._bytes, self._finished, self._since = 0, 0, now
