"""Energy per request: the measured window's GPU energy attributed to the requests that used it.

The window is cut at the sampler's readings (~100 ms apart, the window's own edges included); each
interval's energy — the change of the summed energy counter, else the trapezoid of instant power — is
split over the requests by a weight each carries in that interval (the rules, in docs/method.md):

- ``work``: the work a request caused there. Its prompt work (prompt tokens charged × J per prompt token)
  is spread evenly over the time from its start of service to its first token; its output work (output
  tokens × J per output token) lands where its tokens were stamped (evenly from its first token to its end
  where the engine gave no token times). A long prefill beside many decoders is charged its prefill. A
  request that got no token is charged no prompt work: its prefill may never have run.
- ``output_tokens``: the output tokens a request produced there (a prefill beside decoders is charged
  nothing until its first token).

Under either rule an interval with requests in service but no weight (a stall; under ``output_tokens``
also a prefill) is split equally among them, and an interval with no request in service (an idle gap
between arrivals) is the deployment's standing cost, split equally over all the window's requests.
Shares are normalised so the requests' energies sum to the window's energy; a request's adjusted energy
takes off the baseline power times the seconds it is charged for by the same weights, so the adjusted
energies sum to the window's adjusted energy. Under ``work`` a request's adjusted energy is further told
apart into its prompt and its output terms (the rest is its share of stalls and idle gaps).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from llem.workload.records import RequestResult

Work = Tuple[List[float], List[float]]  # (prompt work, output work) of each request in one interval


@dataclass
class Shares:
    """Each request's part of the window's energy (J), in the order of the results; None: not measured."""

    raw_j: List[Optional[float]]
    adjusted_j: List[Optional[float]]
    prompt_adjusted_j: List[Optional[float]]  # its prompt term of adjusted_j (work rule only)
    output_adjusted_j: List[Optional[float]]  # its output term of adjusted_j (work rule only)
    null_reason: Optional[str] = None

    @classmethod
    def none(cls, n: int, why: str) -> Shares:
        return cls([None] * n, [None] * n, [None] * n, [None] * n, why)


def prompt_tokens_charged(r: RequestResult) -> int:
    """The prompt tokens a request's prefill processed: the engine's or server's own count where it gave one
    (else the prompt sent), less those it says it served from its prefix cache (none, where it does not say)."""
    processed = r.server_input_tokens if r.server_input_tokens is not None else r.input_tokens
    return max(processed - (r.prompt_tokens_cached or 0), 0)


def got_a_token(r: RequestResult) -> bool:
    """Whether a request got a token: one that got none may never have been prefilled, so it is charged no
    prompt work."""
    return r.first_token_s is not None or bool(r.token_times_s)


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


def _spread(a: float, b: float, ta: float, tb: float, first: bool) -> float:
    """The part of an even spread over [a, b] that falls in the interval (ta, tb] (a point: 1 or 0; the
    window's first interval also takes a point on its start)."""
    if b <= a:
        return 1.0 if (ta < a <= tb) or (first and a == ta) else 0.0
    return max(0.0, min(b, tb) - max(a, ta)) / (b - a)


def _tokens_in(stamps: List[float], ta: float, tb: float) -> int:
    return bisect.bisect_right(stamps, tb) - bisect.bisect_right(stamps, ta)


def _in_service(results: Sequence[RequestResult], stamps: List[List[float]],
                spans: List[Tuple[float, float, float]]) -> List[List[int]]:
    """For each interval, the requests in service in it (from their start of service or first token stamp,
    whichever is earlier, to their end or last stamp): one sweep, so a long window of many requests stays
    linear in the intervals and the requests in flight."""
    reach = [(min([r.start_s, *s[:1]]), max([r.end_s, *s[-1:]])) for r, s in zip(results, stamps)]
    order = sorted(range(len(results)), key=lambda i: reach[i][0])
    out, active, nxt = [], set(), 0
    for ta, tb, _ in spans:
        while nxt < len(order) and reach[order[nxt]][0] <= tb:
            active.add(order[nxt])
            nxt += 1
        active = {i for i in active if reach[i][1] >= ta}
        out.append(sorted(active))
    return out


def _split(spans: List[Tuple[float, float, float]], results: Sequence[RequestResult], stamps: List[List[float]],
           work: Callable[[float, float, bool, List[int]], Work], t0: float, t1: float, energy_j: float,
           baseline_power_w: Optional[float], terms: bool) -> Shares:
    """Each interval's energy split by ``work`` (see the module's rule) over the requests in service in it,
    normalised to the window. ``work`` gives the prompt and output work of each of those requests."""
    n = len(results)
    raw, held = [0.0] * n, [0.0] * n  # J, and seconds of the window each request is charged for
    part_j = {"prompt": [0.0] * n, "output": [0.0] * n}  # J and seconds of its prompt and output terms
    part_s = {"prompt": [0.0] * n, "output": [0.0] * n}
    idle_j = idle_s = 0.0
    for k, ((ta, tb, joules), busy) in enumerate(zip(spans, _in_service(results, stamps, spans))):
        if not busy:
            idle_j, idle_s = idle_j + joules, idle_s + (tb - ta)
            continue
        prompt, output = work(ta, tb, k == 0, busy)
        total = sum(prompt) + sum(output)
        if total > 0:
            weights = [(p + o) / total for p, o in zip(prompt, output)]
            if terms:  # the work rule tells each request's prompt and output terms apart
                for i, p, o in zip(busy, prompt, output):
                    for name, mine in (("prompt", p), ("output", o)):
                        part_j[name][i] += mine / total * joules
                        part_s[name][i] += mine / total * (tb - ta)
        else:  # a stall (under output_tokens also a prefill): split equally
            weights = [1.0 / len(busy)] * len(busy)
        for i, w in zip(busy, weights):
            raw[i] += w * joules
            held[i] += w * (tb - ta)
    raw = [x + idle_j / n for x in raw]
    held = [x + idle_s / n for x in held]
    sampled_j, sampled_s = sum(raw), sum(held)
    if sampled_j <= 0 or sampled_s <= 0:
        return Shares.none(n, "the sampled intervals hold no energy")
    scale = energy_j / sampled_j  # the sampled intervals against the window's edge readings (within a counter step)
    per_s = (t1 - t0) / sampled_s
    joules = [x * scale for x in raw]
    if baseline_power_w is None:
        return Shares(joules, [None] * n, [None] * n, [None] * n, None)

    def adjusted(j: List[float], s: List[float]) -> List[Optional[float]]:
        return [a * scale - baseline_power_w * b * per_s for a, b in zip(j, s)]

    nulls: List[Optional[float]] = [None] * n
    return Shares(joules, adjusted(raw, held),
                  adjusted(part_j["prompt"], part_s["prompt"]) if terms else nulls,
                  adjusted(part_j["output"], part_s["output"]) if terms else nulls, None)


def _inputs(rows: List[Dict[str, Any]], results: Sequence[RequestResult], t0: float, t1: float,
            energy_j: Optional[float]) -> Tuple[list, List[List[float]], Optional[Shares]]:
    """The window's intervals and each request's sorted token stamps, or the null Shares saying why not."""
    if energy_j is None:
        return [], [], Shares.none(len(results), "no GPU energy")
    spans = _intervals(rows, t0, t1)
    if not spans or not results:
        return [], [], Shares.none(len(results), "no GPU time series in the window")
    return spans, [sorted(r.token_times_s or []) for r in results], None


def output_tokens_rule(rows: List[Dict[str, Any]], results: Sequence[RequestResult], t0: float, t1: float,
                       energy_j: Optional[float], baseline_power_w: Optional[float]) -> Shares:
    """Each interval split by the output tokens each request produced in it."""
    spans, stamps, missing = _inputs(rows, results, t0, t1, energy_j)
    if missing is not None:
        return missing

    def work(ta: float, tb: float, first: bool, busy: List[int]) -> Work:
        return [0.0] * len(busy), [float(_tokens_in(stamps[i], ta, tb)) for i in busy]

    return _split(spans, results, stamps, work, t0, t1, energy_j, baseline_power_w, terms=False)


def work_rule(rows: List[Dict[str, Any]], results: Sequence[RequestResult], t0: float, t1: float,
              energy_j: Optional[float], baseline_power_w: Optional[float], j_per_prompt_token: float,
              j_per_output_token: float) -> Shares:
    """Each interval split by the prompt and output work each request caused in it."""
    spans, stamps, missing = _inputs(rows, results, t0, t1, energy_j)
    if missing is not None:
        return missing
    # a request that never got a token may never have been prefilled: only its output work (none) counts
    prompt_j = [prompt_tokens_charged(r) * j_per_prompt_token if got_a_token(r) else 0.0 for r in results]
    first = [r.first_token_s if r.first_token_s is not None else (s[0] if s else r.end_s)
             for r, s in zip(results, stamps)]
    # a prefill spread over its whole span: what lies outside the window is not in it
    prefill = [(r.start_s, max(f, r.start_s)) for r, f in zip(results, first)]

    def work(ta: float, tb: float, first_span: bool, busy: List[int]) -> Work:
        prompt, output = [], []
        for i in busy:
            a, b = prefill[i]
            prompt.append(prompt_j[i] * _spread(a, b, ta, tb, first_span) if prompt_j[i] else 0.0)
            s, r = stamps[i], results[i]
            tokens = float(_tokens_in(s, ta, tb)) if s else r.output_tokens * _spread(first[i], r.end_s, ta, tb,
                                                                                          first_span)
            output.append(tokens * j_per_output_token)
        return prompt, output

    return _split(spans, results, stamps, work, t0, t1, energy_j, baseline_power_w, terms=True)
