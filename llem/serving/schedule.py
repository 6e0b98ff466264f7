"""When the server client may send each request: its due time, and with ``load.max_concurrency`` the time a slot
freed. Every wait here ends by a deadline (``measure.max_window_s``), so an arrival schedule or a server that
never frees a slot cannot hold the client past the window."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Optional

from llem.workload.records import now

# The event loop's timers wake up to 1 ms late (epoll waits in whole milliseconds, rounded up): a request sleeps
# until this much before its due time, then yields to the loop until the time comes.
EARLY_S = 0.0015


async def sleep_until(t: float) -> None:
    """Sleep until ``t`` (on :func:`now`'s clock), within a few microseconds when the loop is idle."""
    wait = t - now() - EARLY_S
    if wait > 0:
        await asyncio.sleep(wait)
    while now() < t:
        await asyncio.sleep(0)


class Slots:
    """The concurrency cap as the times its slots freed. :meth:`take` waits for a free slot (until ``end``) and
    returns when the slot it took freed: the earliest still unclaimed, ``t0`` for the first ``cap`` requests.
    With no cap every request has a slot of its own, free from ``t0``."""

    def __init__(self, cap: Optional[int], t0: float) -> None:
        self.cap, self.t0 = cap, t0
        self._free = deque([t0] * cap) if cap else None
        self._slots = asyncio.Semaphore(cap) if cap else None

    async def take(self, end: float) -> Optional[float]:
        """Take a slot: when it freed; None when none freed before ``end``."""
        if self._slots is None:
            return self.t0
        try:  # asyncio.wait_for, not asyncio.timeout_at: Python 3.10 has no timeout_at
            await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, end - now()))
        except asyncio.TimeoutError:
            return None
        return self._free.popleft()

    def give_back(self) -> None:
        """A request ended: its slot is free from now."""
        if self._slots is not None:
            self._free.append(now())
            self._slots.release()
