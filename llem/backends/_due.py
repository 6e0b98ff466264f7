"""When each request is due under the job's load, for engines that admit requests in llem's process.

One meaning of load everywhere (in-process engines and servers alike): ``load.request_rate=inf`` without
``load.max_concurrency`` is a burst, every request due at the call's start; with ``load.max_concurrency=N``
it is a closed loop, N requests due at the start and each later one due when a request finishes (the
slot it takes frees); a finite rate is an open loop, each request due at its arrival time. A conversation's
turn (``Request.after``) is due ``think_s`` after the turn before it finished (in a closed loop, not before a
slot frees either). TTFT and end-to-end latency count from the due time, so a wait for a slot is queueing and
counts.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

from llem.workload.records import Request


class DueTimes:
    """Due times (host clock) of one generate call's requests, handed out in the order they are admitted."""

    def __init__(self, t0: float, closed_loop: Optional[int]) -> None:
        self.t0 = t0
        self.closed = closed_loop is not None
        self.slots = deque([t0] * (closed_loop or 0))  # when each slot a closed loop hands out freed

    def admit(self, request: Request, follows_at: Optional[float] = None) -> float:
        """The due time of ``request``, admitted now (call in admission order); ``follows_at``: a turn's own due
        time (the turn before it finished, plus its think time), which a closed loop's slot may push later."""
        if follows_at is not None:
            return max(follows_at, self.slots.popleft()) if self.closed and self.slots else follows_at
        if request.arrival_s is not None:
            return self.t0 + request.arrival_s
        if self.closed and self.slots:
            return self.slots.popleft()
        return self.t0

    def finished(self, at: float) -> None:
        """A request finished at ``at``: in a closed loop, the next request is due then."""
        if self.closed:
            self.slots.append(at)


class Schedule:
    """Which of one generate call's requests are due, and when, for an engine admitting them between its steps.

    A request is ready at its arrival time (``t0 + arrival_s``; the call's start without one), or, when it is
    a turn following another request of the call (``after``), once that request has finished, ``think_s``
    after it did. Ready requests are admitted earliest first, at most ``cap`` in flight (None: no cap); each
    admitted one gets its due time from :class:`DueTimes`. The engine reports each finish
    (:meth:`finished`)."""

    def __init__(self, requests: Sequence[Request], t0: float, closed: Optional[int], cap: Optional[int]) -> None:
        self.due = DueTimes(t0, closed)
        self.cap = cap
        self.in_flight = 0
        ids = {r.request_id for r in requests}
        self._ready: List[Tuple[float, int, Request, bool]] = []  # (ready at, order, request, is a turn): a heap
        self._held: Dict[int, List[Tuple[int, Request]]] = {}  # predecessor's id -> the turns following it
        for order, r in enumerate(requests):
            if r.after is not None and r.after in ids:
                self._held.setdefault(r.after, []).append((order, r))
            else:
                heapq.heappush(self._ready, (t0 + (r.arrival_s or 0.0), order, r, False))

    @property
    def waiting(self) -> bool:
        """Requests not yet admitted: ready ones, or turns whose predecessor has not finished."""
        return bool(self._ready or self._held)

    def next_ready(self) -> Optional[float]:
        """When the earliest known request is ready (host clock); None while none is known."""
        return self._ready[0][0] if self._ready else None

    def admit(self, clock: float) -> List[Tuple[Request, float]]:
        """The requests to add now (ready by ``clock``, while the cap allows), each with its due time."""
        out: List[Tuple[Request, float]] = []
        while self._ready and self._ready[0][0] <= clock and (self.cap is None or self.in_flight < self.cap):
            at, _, request, turn = heapq.heappop(self._ready)
            out.append((request, self.due.admit(request, at if turn else None)))
            self.in_flight += 1
        return out

    def finished(self, request_id: int, at: float) -> None:
        """Request ``request_id`` finished at ``at``: its slot frees, and the turn following it is ready
        ``think_s`` later."""
        self.in_flight -= 1
        self.due.finished(at)
        for order, turn in self._held.pop(request_id, []):
            heapq.heappush(self._ready, (at + turn.think_s, order, turn, True))


def closed_loop(load) -> Optional[int]:
    """N for a closed loop (``request_rate=inf`` with ``max_concurrency=N``), else None (the one definition
    of the load's modes: :func:`llem.config.load.load_mode`)."""
    from llem.config.load import load_mode

    return load.max_concurrency if load_mode(load) == "closed" else None
