"""Energy of parts of a window, from what was already recorded: no device access here.

Steady state (as ML.ENERGY reports it): the part of the measured window during which the
engine held its full complement of sequences. It starts when ``in_flight`` requests are first
being served at once and ends when that count last drops below ``in_flight`` — for a queue of
more requests than slots, when the first request of the final, partial wave finishes. Ramp-up
(the first wave's prefill) and the draining tail are outside it. Its energy comes from the
sampled energy counter, interpolated at both edges (the counter steps every ~100 ms, so an edge
is off by at most one step), and its tokens are those whose time stamps fall inside it.

Prefill/decode: a prefill-only pass (output length 1) of the same workload measures prefill;
decode is the measured window minus it. The difference is reported as is, never clipped, and
flagged when it is not meaningful.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.energy.window import COUNTER_UPDATE_S, MIN_WINDOW_UPDATES
from llem.results.row import PrefillDecode, SteadyState
from llem.workload.records import RequestResult

log = logging.getLogger(__name__)


def saturated_span(results: Sequence[RequestResult], in_flight: int) -> Tuple[Optional[Tuple[float, float]], str]:
    """(t0, t1) of the steady state, or (None, why there is none)."""
    if len(results) <= in_flight:
        return None, f"needs more requests than the {in_flight} sequences the engine holds at once"
    events = sorted([(r.start_s, 1) for r in results] + [(r.end_s, -1) for r in results], key=lambda e: (e[0], e[1]))
    running, t0, t1 = 0, None, None
    for t, step in events:
        running += step
        if running >= in_flight and t0 is None:
            t0 = t
        if step < 0 and running == in_flight - 1 and t0 is not None:
            t1 = t  # the latest drop below a full complement
    if t0 is None or t1 is None or t1 <= t0:
        return None, f"the engine never held {in_flight} sequences at once"
    return (t0, t1), ""


def tokens_between(results: Sequence[RequestResult], t0: float, t1: float) -> Optional[int]:
    """Output tokens stamped inside [t0, t1]; None when an engine gave no per-token times."""
    if any(r.token_times_s is None and r.output_tokens for r in results):
        return None
    return sum(1 for r in results for t in (r.token_times_s or []) if t0 <= t <= t1)


def _interp(points: List[Tuple[float, float]], t: float) -> Optional[float]:
    times = [p[0] for p in points]
    i = bisect.bisect_left(times, t)
    if i < len(points) and times[i] == t:
        return points[i][1]
    if i == 0 or i == len(points):
        return None
    (ta, va), (tb, vb) = points[i - 1], points[i]
    return va + (vb - va) * (t - ta) / (tb - ta)


def energy_between(rows: List[Dict[str, Any]], t0: float, t1: float) -> Tuple[Optional[float], str]:
    """Energy of all sampled GPUs in [t0, t1] (J) from the interpolated counter, else from the
    instant power; (None, why) when neither covers the span."""
    by_gpu: Dict[int, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("gpu_index") is not None:
            by_gpu.setdefault(r["gpu_index"], []).append(r)
    if not by_gpu:
        return None, "no GPU time series"
    total, methods = 0.0, set()
    for gpu_rows in by_gpu.values():
        gpu_rows = sorted(gpu_rows, key=lambda r: r["t_s"])
        counter = [(r["t_s"], float(r["energy_counter_mj"])) for r in gpu_rows
                   if r.get("energy_counter_mj") is not None]
        a, b = _interp(counter, t0), _interp(counter, t1)
        if a is not None and b is not None and b >= a:
            total += (b - a) / 1000.0
            methods.add("nvml_counter_interpolated")
            continue
        power = [(r["t_s"], r["power_instant_w"]) for r in gpu_rows if r.get("power_instant_w") is not None]
        pa, pb = _interp(power, t0), _interp(power, t1)
        if pa is None or pb is None:
            return None, "the time series does not cover the steady state"
        inner = [(t0, pa)] + [p for p in power if t0 < p[0] < t1] + [(t1, pb)]
        total += sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(inner, inner[1:]))
        methods.add("nvml_power_instant_integral")
    return total, "+".join(sorted(methods))


def steady_state(results: Sequence[RequestResult], in_flight: int, rows: List[Dict[str, Any]],
                 baseline_power_w: Optional[float],
                 found: Optional[Tuple[Optional[Tuple[float, float]], str]] = None) -> SteadyState:
    """The steady state's columns; ``found``: (span, why none) decided by the caller (a timed load's).
    ``steady_state_null_reason`` is set only when there is no steady state; when there is one, a
    null energy has the window's reason (``energy_null_reason``)."""
    span, why = found if found is not None else saturated_span(results, in_flight)
    if span is None:
        return SteadyState(steady_state_null_reason=why)
    t0, t1 = span
    seconds, tokens = t1 - t0, tokens_between(results, t0, t1)
    out = SteadyState(steady_state_s=seconds, steady_state_output_tokens=tokens,
                      steady_state_output_tok_per_s=tokens / seconds if tokens else None)
    if tokens is None:
        log.warning("steady state: output tokens not counted: the engine gave no per-token times")
    energy, how = energy_between(rows, t0, t1)
    out.steady_state_energy_j = energy
    if energy is None:  # the reason is the window's own (energy_null_reason) or logged here
        log.debug("steady-state energy not measured: %s", how)
    elif baseline_power_w is not None:
        adjusted = energy - baseline_power_w * seconds
        out.steady_state_energy_adjusted_j = adjusted
        out.steady_state_j_per_output_token = adjusted / tokens if tokens else None
    return out


def prefill_decode(measured_s: float, measured_j: Optional[float], prefill_s: float, prefill_j: Optional[float],
                   baseline_power_w: Optional[float], input_tokens: int, output_tokens: int,
                   num_requests: int) -> Tuple[PrefillDecode, List[str]]:
    """Prefill and decode columns (decode = measured − prefill) and warnings when decode is not meaningful."""
    warnings: List[str] = []
    decode_s = measured_s - prefill_s
    decode_j = measured_j - prefill_j if measured_j is not None and prefill_j is not None else None

    def adjusted(e: Optional[float], s: float) -> Optional[float]:
        return None if e is None or baseline_power_w is None else e - baseline_power_w * s

    prefill_adj, decode_adj = adjusted(prefill_j, prefill_s), adjusted(decode_j, decode_s)
    decode_tokens = output_tokens - num_requests  # the first token of every request comes from prefill
    cols = PrefillDecode(
        prefill_s=prefill_s,
        prefill_energy_j=prefill_j,
        prefill_energy_adjusted_j=prefill_adj,
        prefill_j_per_input_token=prefill_adj / input_tokens if prefill_adj is not None and input_tokens else None,
        decode_s=decode_s,
        decode_energy_j=decode_j,
        decode_energy_adjusted_j=decode_adj,
        decode_j_per_output_token=decode_adj / decode_tokens if decode_adj is not None and decode_tokens > 0
        else None,
    )
    if prefill_j is not None and prefill_s < MIN_WINDOW_UPDATES * COUNTER_UPDATE_S:
        warnings.append(f"the prefill pass lasted {prefill_s:.2f} s, under {MIN_WINDOW_UPDATES} energy-counter "
                        "updates: its energy (and so decode's) is off by up to one ~100 ms counter step at each edge; "
                        "more requests give a longer prefill pass")
    if decode_s <= 0 or (decode_j is not None and decode_j <= 0):
        warnings.append(f"decode = measured − prefill is not meaningful ({decode_s:.3f} s, "
                        f"{'n/a' if decode_j is None else f'{decode_j:.1f}'} J): the prefill pass took as long "
                        "or as much energy as the whole window")
    elif decode_adj is not None and decode_adj <= 0:
        warnings.append(f"adjusted decode energy {decode_adj:.1f} J is not positive: the baseline is above "
                        "the decode power")
    return cols, warnings
