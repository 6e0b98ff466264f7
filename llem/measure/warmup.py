"""The warm-up: batches run after load and before the baseline, excluded from every metric. Its fastest
batch (one wave at the measured output lengths) predicts how long a window of whole waves lasts."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from llem.energy.window import WindowEnergy
from llem.measure import load_metrics, metrics, sizing
from llem.workload.records import Request

log = logging.getLogger(__name__)


@dataclass
class Warmup:
    window: Optional[WindowEnergy]
    batches_run: int
    latency_cv: Optional[float]
    fastest_s: Optional[float] = None  # the quickest batch: one wave, when sized and long as the measured ones
    fastest_len_mean: Optional[float] = None  # the mean output length the quickest batch asked for


def at_once(request: Request) -> Request:
    """The request arriving with every other (warm-up batches, the prefill pass), following no other turn."""
    if request.arrival_s is None and request.after is None:
        return request
    return dataclasses.replace(request, arrival_s=None, after=None)


def warm_up(config: Any, engine: Any, work: Any, metered: Callable[[Callable[[], None]], WindowEnergy],
            predict: bool, warnings: List[str]) -> Warmup:
    """Warm-up batches of as many requests as the engine holds at once, one generate call each, run inside
    ``metered`` (the warm-up's energy window): a fixed count, or until the CV of the last ``cv_window``
    batch latencies is ≤ ``until_cv``. When the fastest batch is to predict the window (``predict``), at
    least two: an engine's first call can be cold (seen on an H200: 16.6 s, then 2.8 s, for one batch-1
    wave of PyTorch). A batch in which every request failed fails the job, quoting the requests' errors."""
    cfg = config.warmup
    if cfg.batches == 0:
        return Warmup(None, 0, None)
    reqs = [at_once(r) for r in work.requests]  # warm-up batches arrive at once, whatever the load
    size = min(len(reqs), engine.sequences_in_flight())
    out_len = cfg.output_len or config.output_len  # None: each request's own length
    latencies: List[float] = []
    asked: List[float] = []  # each batch's mean output length asked for
    cv = None
    most = max(cfg.batches, 2) if predict and cfg.until_cv is None else cfg.batches

    def run() -> None:
        nonlocal cv
        for b in range(most):
            batch = [reqs[(b * size + i) % len(reqs)] for i in range(size)]
            t0 = time.perf_counter()
            done = engine.generate(batch, out_len, lambda n: None)
            engine.synchronize()
            load_metrics.check_some_succeeded(done, f"warm-up batch {b + 1}")
            latencies.append(time.perf_counter() - t0)
            asked.append(sizing.asked_mean(batch, out_len, config.output_len_max))
            cv = metrics.cv(latencies[-cfg.cv_window:]) if len(latencies) >= cfg.cv_window else None
            log.info("warm-up batch %d/%d: %d requests in %.2f s%s", b + 1, most, size, latencies[-1],
                     "" if cv is None else f" (latency CV {cv:.3f})")
            if cfg.until_cv is not None and cv is not None and cv <= cfg.until_cv:
                return

    window = metered(run)
    if cfg.until_cv is not None and (cv is None or cv > cfg.until_cv):
        warnings.append(f"warmup did not settle: batch-latency CV {cv if cv is None else f'{cv:.3f}'} "
                        f"> warmup.until_cv={cfg.until_cv} after {len(latencies)} batches")
    one_wave = size == engine.sequences_in_flight() and out_len == config.output_len
    if not latencies or not one_wave:
        return Warmup(window, len(latencies), cv)
    fastest = latencies.index(min(latencies))
    return Warmup(window, len(latencies), cv, latencies[fastest], asked[fastest])
