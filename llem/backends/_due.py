"""When each request is due under the job's load, for engines that admit requests in llem's process.

One meaning of load everywhere (in-process engines and servers alike): ``load.request_rate=inf`` without
``load.max_concurrency`` is a burst, every request due at the call's start; with ``load.max_concurrency=N``
it is a closed loop, N requests due at the start and each later one due when a request finishes (the
slot it takes frees); a finite rate is an open loop, each request due at its arrival time. TTFT and
end-to-end latency count from the due time, so a wait for a slot is queueing and counts.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from llem.workload.records import Request


class DueTimes:
    """Due times (host clock) of one generate call's requests, handed out in the order they are admitted."""

    def __init__(self, t0: float, closed_loop: Optional[int]) -> None:
        self.t0 = t0
        self.closed = closed_loop is not None
        self.slots = deque([t0] * (closed_loop or 0))  # when each slot a closed loop hands out freed

    def admit(self, request: Request) -> float:
        """The due time of ``request``, admitted now (call in admission order)."""
        if request.arrival_s is not None:
            return self.t0 + request.arrival_s
        if self.closed and self.slots:
            return self.slots.popleft()
        return self.t0

    def finished(self, at: float) -> None:
        """A request finished at ``at``: in a closed loop, the next request is due then."""
        if self.closed:
            self.slots.append(at)


def closed_loop(load) -> Optional[int]:
    """N for a closed loop (``request_rate=inf`` with ``max_concurrency=N``), else None (the one definition
    of the load's modes: :func:`llem.config.load.load_mode`)."""
    from llem.config.load import load_mode

    return load.max_concurrency if load_mode(load) == "closed" else None
