"""Pure computations from raw measurements: per-request latencies, their statistics, and
energy per unit of work with the idle baseline subtracted. No I/O, no devices."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from llem.energy.attribution import got_a_token, prompt_tokens_charged
from llem.results.row import EnergySummary, Latency
from llem.results.tables import RequestRow
from llem.workload.records import Request, RequestResult


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1000.0


def request_rows(results: Sequence[RequestResult], window_t0: float) -> List[RequestRow]:
    """One row per request: TTFT, end-to-end, TPOT and every inter-token latency (ms). TTFT and end-to-end
    count from the request's due time (``arrival_s``: its arrival at a rate, the call's start in a burst,
    when a slot freed in a closed loop), queueing included, as a client of a server sees them, in every
    engine; a result that names no due time was due at the window's start."""
    rows = []
    for r in results:
        origin = r.arrival_s if r.arrival_s is not None else window_t0
        times = r.token_times_s or []
        itl = [(b - a) * 1000.0 for a, b in zip(times, times[1:])]
        tpot = None
        if r.first_token_s is not None and r.output_tokens > 1:
            tpot = (r.end_s - r.first_token_s) * 1000.0 / (r.output_tokens - 1)
        rows.append(RequestRow(
            request_id=r.request_id,
            batch_index=r.batch_index,
            process_index=r.process_index,
            input_tokens=r.input_tokens,
            server_input_tokens=r.server_input_tokens,
            output_tokens=r.output_tokens,
            prompt_tokens_cached=r.prompt_tokens_cached,
            prompt_tokens_charged=prompt_tokens_charged(r) if got_a_token(r) else None,
            arrival_offset_s=origin - window_t0,
            start_offset_s=r.start_s - window_t0,
            queue_ms=_ms(r.start_s - origin),
            lateness_ms=_ms(r.lateness_s),
            output_tokens_requested=r.output_len_requested,
            error=r.error,
            ttft_ms=_ms(r.first_token_s - origin) if r.first_token_s is not None else None,
            e2e_ms=_ms(r.end_s - origin),
            tpot_ms=tpot,
            itl_ms=itl if times else None,
            timing_note=r.timing_note,
            token_count_note=r.token_count_note,
        ))
    return rows


# what a workload gives each request that its requests.parquet row keeps: a trace's class, a shared-prefix
# workload's group, a conversation's index and turn, and the tokens of its prompt an earlier request shared
REQUEST_LABELS = ("request_class", "prefix_group_index", "conversation_index", "turn_index", "prefix_reusable_tokens")


def label_rows(rows: List[RequestRow], requests: Sequence[Request]) -> None:
    """Each row's :data:`REQUEST_LABELS`, as its request (matched by id) came with them."""
    by_id = {r.request_id: r for r in requests}
    for row in rows:
        request = by_id.get(row.request_id)
        if request is not None:
            for name in REQUEST_LABELS:
                setattr(row, name, getattr(request, name))


def _stats(values: List[float], name: str, pcts=(50, 99), mean: bool = True) -> Dict[str, Optional[float]]:
    import numpy as np

    out: Dict[str, Optional[float]] = {}
    arr = np.asarray(values, dtype=float)
    if mean:
        out[f"{name}_mean"] = float(arr.mean()) if arr.size else None
    for p in pcts:
        out[f"{name}_p{p}"] = float(np.percentile(arr, p)) if arr.size else None
    return out


def latency_summary(rows: List[RequestRow]) -> Latency:
    """Percentiles over all requests (TTFT, e2e) and over all inter-token gaps (ITL); failed requests
    (an error) are left out: they are counted, not averaged in."""
    rows = [r for r in rows if not r.error]
    ttft = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    e2e = [r.e2e_ms for r in rows if r.e2e_ms is not None]
    itl = [x for r in rows for x in (r.itl_ms or [])]
    tpot = [r.tpot_ms for r in rows if r.tpot_ms is not None]
    out = {}
    out.update(_stats(ttft, "ttft_ms", (50, 90, 99)))
    out.update(_stats(e2e, "e2e_ms"))
    out.update(_stats(itl, "itl_ms"))
    out.update(_stats(tpot, "tpot_ms", pcts=()))
    return Latency(**out)


def energy_summary(
    energy_j: Optional[float],
    window_s: float,
    output_tokens: int,
    num_requests: int,
    baseline_kind: str,
    idle_power_w: Dict[str, Optional[float]],
) -> Tuple[EnergySummary, List[str]]:
    """Baseline, adjusted energy and the per-unit figures derived from them, and warnings.

    ``idle_power_w`` maps a baseline kind (device_idle, loaded_idle) to its summed power
    over the job's GPUs. ``adjusted = raw − baseline_power × window``; it is not clipped at 0
    (a negative value means the baseline was wrong, and says so). kind=none: adjusted = raw.
    """
    out = EnergySummary(baseline_kind=baseline_kind)
    warnings: List[str] = []
    if energy_j is None:
        return out, warnings
    if output_tokens:
        out.j_per_output_token_raw = energy_j / output_tokens
    if baseline_kind == "none":
        adjusted = energy_j
    else:
        power = idle_power_w.get(baseline_kind)
        if power is None:
            warnings.append(f"baseline {baseline_kind} was not measured: adjusted energy is null")
            return out, warnings
        out.baseline_power_w = power
        out.baseline_energy_j = power * window_s
        adjusted = energy_j - power * window_s
        if adjusted <= 0:
            warnings.append(
                f"adjusted energy {adjusted:.1f} J is not positive: the {baseline_kind} baseline "
                f"({power:.1f} W) is above the window's average power"
            )
    out.gpu_energy_adjusted_j = adjusted
    if output_tokens:
        out.j_per_output_token = adjusted / output_tokens
    if num_requests:
        out.j_per_request = adjusted / num_requests
    if adjusted > 0:
        out.output_tokens_per_j = output_tokens / adjusted
    return out, warnings


def cv(values: Sequence[float]) -> Optional[float]:
    """Coefficient of variation (sample std / mean), None for fewer than two values or a zero mean."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    if arr.size < 2 or arr.mean() == 0:
        return None
    return float(arr.std(ddof=1) / arr.mean())
