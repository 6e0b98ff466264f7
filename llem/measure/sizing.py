"""How many requests a job measures: the user's ``dataset.num_requests``, or sized by llem.

With ``dataset.num_requests`` null (the default) a job measures ``measure.waves`` whole waves of
the sequences the engine holds at once (``batch`` × replicas; a server of unknown concurrency counts as
``load.max_concurrency``, else llem's in-process default), so every wave fills the batch and
the window has a steady state. On a GPU the energy counter steps every ~0.1 s, so the window must
also last ``measure.min_window_s``: the warm-up's fastest batch (one wave, the same output length;
with natural lengths scaled from the mean length it asked for to the workload's) predicts how many
whole waves that takes, and a window that still comes out short is measured again (twice at most) with
the count scaled by what it showed (the short one is discarded, like a warm-up).

A burst against a server whose concurrency llem does not know (``batch`` null, no flag of the engine's
own in ``server.args``, or an external server) is sized from what the short window shows instead: the
most requests it had in service at once (first token to end). Fewer than all: that is what the server
runs at once, and the next count is whole waves of it, one wave lasting the window ÷ the waves it ran.
All of them: the server may hold more, its window barely grows with the count until the count passes
what it holds, so the count grows GROWTH-fold (or more, where the window's rate asks for more); held whole
a second time, the two windows' growth with the count is carried on to the minimum (between 2- and
GROWTH-fold), so a third pass does not overshoot by a whole GROWTH step.

At a finite ``load.request_rate`` the window lasts about count ÷ rate: the count is at least
rate × ``measure.min_window_s`` (on a GPU), and a short window is measured again the same way.

A trace (``load.trace``) is replayed as recorded: its first ``dataset.num_requests`` requests, or all of
them, never resized. A count the user set is honoured as given; what it cannot give (a full batch, a steady state, a
long enough window) is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from llem.energy.flags import Flag
from llem.results.row import Sizing
from llem.workload.records import Request, RequestResult

MAX_PASSES = 3  # measured passes at most: a short window is measured again, twice at most
MARGIN = 1.1  # aim 10 % past the minimum: a wave's time varies a little between warm-up and window
# A burst every request of which a server of unknown concurrency had in service at once grows this many fold:
# two such steps from the 4 waves of 4 it starts with reach vLLM's largest default (1024) and the window's
# overshoot is bounded (at worst GROWTH waves where the server held exactly the short window's count).
GROWTH = 8


@dataclass
class Plan:
    """The request count of one job and how it was decided."""

    auto: bool  # sized by llem (dataset.num_requests null)
    capacity: int  # sequences the engine holds at once
    num_requests: int
    min_window_s: Optional[float]  # the window asked for; None where no minimum applies (CPU, or 0)
    max_requests: int
    estimate_s: Optional[float] = None  # the window the warm-up predicted for num_requests
    passes: int = 1  # measured passes run (2: the first window was short and discarded)
    capped: bool = False  # the count the window needed was more than max_requests
    max_in_flight: Optional[int] = None  # what one engine runs at once as it ran (batch, or a known default)
    max_in_flight_null_reason: Optional[str] = None
    observe: bool = False  # a burst against a server of unknown concurrency: sized by the peak it showed
    held_all: Optional[Tuple[int, float]] = None  # (count, window s) of a short burst the server held whole
    trace: bool = False  # the count is load.trace's (its first dataset.num_requests lines, or all)

    def waves_of(self, n: int) -> float:
        return n / self.capacity


def plan(num_requests: Optional[int], waves: int, min_window_s: float, max_requests: int, capacity: int,
         on_gpu: bool, request_rate: float = math.inf, burst_unknown: bool = False) -> Plan:
    """The starting count: the user's, or ``waves`` × ``capacity`` (within ``max_requests``); at a finite
    ``request_rate`` at least as many as arrive in MARGIN × the minimum window. ``burst_unknown``: a burst
    against a server whose concurrency is unknown (``capacity`` is then only where the count starts)."""
    minimum = min_window_s if on_gpu and min_window_s > 0 else None
    if num_requests is not None:
        return Plan(False, capacity, num_requests, minimum, max_requests)
    n = waves * capacity
    if request_rate != math.inf and minimum is not None:
        n = max(n, math.ceil(MARGIN * minimum * request_rate))
    capped = n > max_requests
    return Plan(True, capacity, min(n, _whole_waves_within(max_requests, capacity)), minimum, max_requests,
                capped=capped, observe=burst_unknown)


def for_job(config: Any, engine: Any, on_gpu: bool) -> Plan:
    """The plan of one job on ``engine`` (what it holds at once, and whether that is known): a burst against
    a server whose concurrency is unknown is sized by what its windows show."""
    held, why = engine.max_in_flight()
    m, load = config.measure, config.load
    count = config.dataset.num_requests
    if load.trace is not None:  # a trace is replayed as recorded: its first dataset.num_requests, or all of it
        from llem.workload import trace

        count = len(trace.replayed(config))
    elif getattr(config.dataset, "name", None) == "conversations":  # its count is its conversations' turns
        from llem.workload import build

        count = len(build(config).requests)
    p = plan(count, m.waves, m.min_window_s, m.max_requests, engine.sequences_in_flight(),
             on_gpu=on_gpu, request_rate=load.request_rate,
             burst_unknown=held is None and not load.timed and not load.max_concurrency)
    p.max_in_flight, p.max_in_flight_null_reason = held, why
    p.trace = load.trace is not None
    return p


def in_service_peak(outputs: Sequence[RequestResult]) -> Tuple[Optional[int], Optional[str]]:
    """The most requests in service at once (from first token to end; a request sent but still queued in a
    server is not in service), and why it is None, if it is. A request that ends as another's first token
    arrives is not counted with it."""
    spans = [(o.first_token_s, o.end_s) for o in outputs if o.error is None and o.first_token_s is not None]
    if not spans:
        return None, ("no request succeeded" if all(o.error is not None for o in outputs)
                      else "no request reported its first token's time")
    events = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])  # at a tie, an end first
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak, None


def _whole_waves_within(limit: int, capacity: int) -> int:
    return max(capacity, (limit // capacity) * capacity) if limit >= capacity else limit


def _count_for(p: Plan, seconds_per_request: float) -> int:
    """Whole waves enough for MARGIN × the minimum window at this rate (never fewer than now)."""
    wanted = math.ceil(MARGIN * p.min_window_s / seconds_per_request)
    n = max(p.num_requests, math.ceil(wanted / p.capacity) * p.capacity)
    if n > p.max_requests:
        p.capped = True
        n = max(p.num_requests, _whole_waves_within(p.max_requests, p.capacity))
    return n


def extend_for_window(p: Plan, wave_s: Optional[float]) -> int:
    """The count after the warm-up: enough whole waves for the minimum window, predicted from one
    wave's time ``wave_s`` (None: no prediction, the count stays)."""
    if not p.auto or p.min_window_s is None or not wave_s or wave_s <= 0:
        return p.num_requests
    n = _count_for(p, wave_s / p.capacity)
    p.num_requests = n
    p.estimate_s = p.waves_of(n) * wave_s
    return n


def asked_mean(requests: Sequence[Request], output_len: Optional[int], longest: int) -> float:
    """The mean output length ``requests`` ask for: ``output_len``, else each request's own (natural
    lengths; ``longest`` for one that names none)."""
    if output_len is not None or not requests:
        return float(output_len if output_len is not None else longest)
    return sum(r.output_len or longest for r in requests) / len(requests)


def wave_for_lengths(wave_s: Optional[float], wave_len_mean: Optional[float], work_len_mean: float
                     ) -> Optional[float]:
    """One wave's time at the workload's mean output length, from a warm-up wave that asked for
    ``wave_len_mean`` on average: with natural lengths the warm-up's fastest wave is the one that asked
    for the fewest tokens, and taken as it is it predicts too short a window."""
    if wave_s is None or not wave_len_mean:
        return wave_s
    return wave_s * work_len_mean / wave_len_mean


def remeasure_count(p: Plan, window_s: float, peak: Optional[int] = None) -> Optional[int]:
    """After a measured window: the larger count to measure again when it came out shorter than the
    minimum (auto only, at most MAX_PASSES passes in all), else None. Where what the engine holds at once is
    fixed (its batch; a closed loop's client cap) or the rate is (an open loop), the count is scaled by the
    window's rate; a burst against a server of unknown concurrency by ``peak``, the most requests the
    window had in service at once (:func:`observed_count`), which also becomes the plan's capacity."""
    if p.observe and peak:
        p.capacity = peak  # what the server ran at once, as the burst showed
    if (not p.auto or p.min_window_s is None or p.passes >= MAX_PASSES or window_s >= p.min_window_s
            or window_s <= 0):
        return None
    old = p.num_requests
    if p.observe and peak:
        n, estimate_s = observed_count(p, window_s, peak)
    else:
        n = _count_for(p, window_s / old)
        estimate_s = window_s * n / old  # the short window's rate, the new count
    if n <= old:
        return None
    p.num_requests, p.passes, p.estimate_s = n, p.passes + 1, estimate_s
    return n


def observed_count(p: Plan, window_s: float, peak: int) -> Tuple[int, Optional[float]]:
    """The next count of a short burst that had at most ``peak`` of its requests in service at once, and the
    window it predicts (None: no prediction). Fewer than all: the server runs ``peak`` at once and the window
    held ceil(count ÷ peak) waves of it (a partial wave lasts about as long as a full one), so whole waves of
    ``peak`` enough for MARGIN × the minimum window. All of them: the server may hold more, and until the
    count passes what it holds the window lasts about one request's life whatever the count, so GROWTH times
    the count (more where the window's rate asks for more), with no prediction."""
    old = p.num_requests
    if peak >= old:
        n = max(_grown(p.held_all, old, window_s, MARGIN * p.min_window_s),
                math.ceil(MARGIN * p.min_window_s * old / window_s))
        p.held_all = (old, window_s)
        if n > p.max_requests:
            p.capped, n = True, max(old, p.max_requests)
        return n, None
    wave_s = window_s / math.ceil(old / peak)
    n = math.ceil(MARGIN * p.min_window_s / wave_s) * peak
    if n > p.max_requests:
        p.capped, n = True, max(old, _whole_waves_within(p.max_requests, peak))
    return n, wave_s * n / peak


def _grown(before: Optional[Tuple[int, float]], old: int, window_s: float, target_s: float) -> int:
    """The next count of a burst held whole twice: the window's growth with the count between the two
    (window ∝ count^k, k kept within [1/4, 1]) carried on to the target, at least twice and at most GROWTH
    times the count. Held whole once: GROWTH times."""
    if before is None or before[0] >= old or before[1] <= 0 or window_s <= before[1]:
        return old * GROWTH
    k = min(1.0, max(0.25, math.log(window_s / before[1]) / math.log(old / before[0])))
    wanted = old * (target_s / window_s) ** (1 / k)
    return int(min(old * GROWTH, max(2 * old, math.ceil(wanted))))


def describe(p: Plan) -> str:
    """The count as a dry run says it, before anything is measured."""
    if not p.auto:
        short = p.num_requests < p.capacity
        return (f"{p.num_requests} requests as set" + (
            f" (fewer than the {p.capacity} sequences the engine holds at once: flagged batch_not_filled)"
            if short else ""))
    waves = f"{p.num_requests // p.capacity} waves of {p.capacity}"
    if p.observe:
        more = (f"; a window under {p.min_window_s:g} s is measured again, sized by the most requests the server had "
                "in service at once" if p.min_window_s else "")
        return f"{p.num_requests} requests to start ({waves}: the server's own concurrency is unknown{more})"
    more = f", more whole waves until the window lasts {p.min_window_s:g} s" if p.min_window_s else ""
    return f"{p.num_requests} requests ({waves}{more})"


def part(p: Plan, measured: Optional[int],
         peak: Tuple[Optional[int], Optional[str]] = (None, "no window was measured")) -> Sizing:
    """The row's sizing columns; ``peak``: :func:`in_service_peak` of the measured window."""
    return Sizing(requests_sizing="auto" if p.auto else "trace" if p.trace else "set", num_in_flight=p.capacity,
                  num_waves=p.waves_of(measured) if measured else None, window_min_s=p.min_window_s,
                  window_estimate_s=p.estimate_s, measure_passes_run=p.passes, num_in_flight_engine=p.max_in_flight,
                  num_in_flight_engine_null_reason=p.max_in_flight_null_reason, num_in_service_peak=peak[0],
                  num_in_service_peak_null_reason=peak[1])


def hint(p: Plan) -> str:
    """What the user can change when the count fell short ('' when nothing)."""
    if p.trace:
        return "replay more of load.trace (dataset.num_requests null: all of it), or a longer trace"
    if not p.auto:
        return "leave dataset.num_requests unset (null) for llem to size it"
    if p.capped:
        return f"raise measure.max_requests (now {p.max_requests})"
    return "set batch (what the server runs at once) or dataset.num_requests" if p.observe else ""


def flags(p: Plan, measured: int, steady_wanted: bool, steady_null_reason: Optional[str]) -> List[Flag]:
    """What the count could not give: a full batch, a steady state (a short window is a window flag)."""
    out: List[Flag] = []
    hint_ = hint(p)
    if measured < p.capacity:
        out.append(Flag("batch_not_filled", (
            f"{measured} requests for an engine that holds {p.capacity} sequences at once: the batch was never full, "
            f"so the numbers are those of a smaller batch{'; ' + hint_ if hint_ else ''}")))
    if steady_wanted and steady_null_reason:
        out.append(Flag("no_steady_state", (
            f"no steady state ({steady_null_reason}): every number includes the ramp-up and the drain"
            f"{'; ' + hint_ if hint_ and measured <= p.capacity else ''}")))
    return out
