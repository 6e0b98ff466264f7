"""Energy per request: the measured window's GPU energy attributed to the requests that used it.

The rule (documented in docs/method.md): the window is cut at the sampler's readings (~100 ms apart,
the window's own edges included); each interval's energy — the change of the summed energy counter,
else the trapezoid of instant power — goes to the requests that produced tokens in it, in proportion
to the tokens each produced there; an interval with requests in service but no token (a prefill, a
stall) is split equally among them; an interval with no request in service (an idle gap between
arrivals) is the deployment's standing cost and is split equally over all the window's requests.
Shares are normalised so the requests' energies sum to the window's energy; a request's adjusted
energy takes off the baseline power times the seconds it is charged for by the same weights, so the
adjusted energies sum to the window's adjusted energy.
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.workload.records import RequestResult


def _intervals(rows: List[Dict[str, Any]], t0: float, t1: float) -> List[Tuple[float, float, float]]:
    """(start, end, joules) of consecutive sample instants in [t0, t1], summed over the GPUs."""
    by_t: Dict[float, Dict[int, Dict[str, Any]]] = {}
    for r in rows:
        if r.get("gpu_index") is not None and t0 <= r["t_s"] <= t1:
            by_t.setdefault(r["t_s"], {})[r["gpu_index"]] = r
    times = sorted(by_t)
    gpus = {g for per in by_t.values() for g in per}
    out = []
    for ta, tb in zip(times, times[1:]):
        a, b = by_t[ta], by_t[tb]
        joules = 0.0
        for g in gpus:
            ra, rb = a.get(g), b.get(g)
            if ra is None or rb is None:
                continue
            ca, cb = ra.get("energy_counter_mj"), rb.get("energy_counter_mj")
            if ca is not None and cb is not None and cb >= ca:
                joules += (cb - ca) / 1000.0
            else:
                pa, pb = ra.get("power_instant_w"), rb.get("power_instant_w")
                if pa is not None and pb is not None:
                    joules += (tb - ta) * (pa + pb) / 2
        out.append((ta, tb, joules))
    return out


def per_request(rows: List[Dict[str, Any]], results: Sequence[RequestResult], t0: float, t1: float,
                energy_j: Optional[float], baseline_power_w: Optional[float]
                ) -> Tuple[List[Optional[float]], List[Optional[float]], Optional[str]]:
    """(raw J per request, adjusted J per request, why null) in the order of ``results``."""
    n = len(results)
    if energy_j is None:
        return [None] * n, [None] * n, "no GPU energy"
    spans = _intervals(rows, t0, t1)
    if not spans or not n:
        return [None] * n, [None] * n, "no GPU time series in the window"
    stamps = [sorted(r.token_times_s or []) for r in results]
    raw = [0.0] * n
    held = [0.0] * n  # seconds of the window each request is charged for, by the same weights
    idle_j = idle_s = 0.0
    for ta, tb, joules in spans:
        counts = [bisect.bisect_right(s, tb) - bisect.bisect_right(s, ta) for s in stamps]
        total = sum(counts)
        if total:
            weights = [c / total for c in counts]
        else:
            busy = [i for i, r in enumerate(results) if r.start_s <= tb and r.end_s >= ta]
            if not busy:
                idle_j, idle_s = idle_j + joules, idle_s + (tb - ta)
                continue
            weights = [1.0 / len(busy) if i in busy else 0.0 for i in range(n)]
        for i, w in enumerate(weights):
            if w:
                raw[i] += w * joules
                held[i] += w * (tb - ta)
    raw = [x + idle_j / n for x in raw]
    held = [x + idle_s / n for x in held]
    sampled_j, sampled_s = sum(raw), sum(held)
    if sampled_j <= 0 or sampled_s <= 0:
        return [None] * n, [None] * n, "the sampled intervals hold no energy"
    scale = energy_j / sampled_j  # the sampled intervals against the window's edge readings (within a counter step)
    joules = [x * scale for x in raw]
    if baseline_power_w is None:
        return joules, [None] * n, None
    seconds = [x * (t1 - t0) / sampled_s for x in held]
    return joules, [j - baseline_power_w * s for j, s in zip(joules, seconds)], None


def into_rows(req_rows: Sequence[Any], results: Sequence[RequestResult], rows: List[Dict[str, Any]], t0: float,
              t1: float, energy_j: Optional[float], baseline_power_w: Optional[float]) -> None:
    """Each request's shares (:func:`per_request`) into its ``requests.parquet`` row (``energy_j``,
    ``energy_adjusted_j``), matched by request id."""
    raw, adjusted, _ = per_request(rows, results, t0, t1, energy_j, baseline_power_w)
    by_id = {r.request_id: i for i, r in enumerate(results)}
    for row in req_rows:
        i = by_id[row.request_id]
        row.energy_j, row.energy_adjusted_j = raw[i], adjusted[i]
