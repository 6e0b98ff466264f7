"""Which requests form the PyTorch engine's next static batch.

All at once (a burst): consecutive runs of ``size`` requests (longest prompts first with ``sort_by_length``),
every one due at the call's start.
At a load: whenever the model is free (the caller asks for the next batch after running the last), the
requests that have arrived by then, oldest first, at most ``size``; when none has, it waits for the next
arrival. Requests arriving while a batch runs wait for the next one: static batching, not continuous.
"""

from __future__ import annotations

import time
from typing import Iterator, List, Sequence, Tuple

from llem.workload.records import Request, now


def static_batches(requests: Sequence[Request], size: int, sort_by_length: bool
                   ) -> Iterator[Tuple[List[Request], float]]:
    """(batch, the clock time arrivals count from: the call's start, when every request is due), one batch
    at a time."""
    order = list(requests)
    if not any(r.arrival_s is not None for r in order):
        if sort_by_length:
            order.sort(key=lambda r: (-r.input_tokens, r.request_id))
        t0 = now()  # a burst: every request is due now, and a later batch's wait is its queueing
        for first in range(0, len(order), size):
            yield order[first:first + size], t0
        return
    order.sort(key=lambda r: (r.arrival_s or 0.0, r.request_id))
    t0 = now()
    while order:
        wait = t0 + (order[0].arrival_s or 0.0) - now()
        if wait > 0:
            time.sleep(wait)
        clock, k = now(), 0
        while k < min(size, len(order)) and t0 + (order[k].arrival_s or 0.0) <= clock:
            k += 1
        batch, order = order[:k], order[k:]
        yield batch, t0
