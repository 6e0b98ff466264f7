"""Metrics of a window measured at a load: the arrival process as it happened, goodput under the
latency bounds of ``objective.bounds``, the server's facts, and the steady state of a timed load.

Goodput counts a request as good when it meets every per-request latency bound: a bound on a TTFT,
end-to-end or queueing statistic (``ttft_ms_p99<=200``, ``e2e_ms_p50<=2000``, ``queue_ms_p99<=50``)
applies to each request's own TTFT, e2e or queueing time; a bound on ITL or TPOT
(``itl_ms_p99<=50``) to each request's mean gap between tokens (its TPOT), as ``vllm bench serve
--goodput`` does. A failed request is never good.

Steady state at a timed load (``load.request_rate`` finite) is the span while requests keep arriving:
from the arrival of the request at the 10th percentile of arrivals to the last arrival — the ramp-up
before it and the drain after the last arrival are left out.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.config import breaks_bound, parse_bound
from llem.config.load import load_mode
from llem.energy.flags import Flag
from llem.results.load import LoadMetrics, ServerFacts
from llem.results.tables import RequestRow
from llem.support.errors import RequestsFailed
from llem.workload.records import RequestResult

PER_REQUEST = {"ttft_ms": "ttft_ms", "e2e_ms": "e2e_ms", "queue_ms": "queue_ms", "itl_ms": "tpot_ms",
               "tpot_ms": "tpot_ms"}
_STAT = re.compile(r"^(ttft_ms|e2e_ms|queue_ms|itl_ms|tpot_ms)(_p\d+|_mean)?$")
RAMP_QUANTILE = 0.1
# p99 of the client's lateness (sent − when it could have been) above which the load it drove is doubtful. On a
# 2-core VM (benchmarks/client_load.py, BENCHMARKS.md "Client load") llem's client stays under 1 ms up to 20–35
# open streams and under 5 ms up to ~110 (a due request waits behind one decode step's chunks); a client that
# blocks its event loop, or sends 64 requests freed at one instant, misses by more.
CLIENT_LATE_MS = 5.0
BURST_LATE_PCT = 1.0  # a burst's or closed loop's bound: this share of the window, where larger (late_bound_ms)
FAILED_PCT_FLAG = 1.0  # requests_failed is raised when more than this share of the requests failed (%)
QUOTED_ERRORS = 3  # distinct request errors quoted in a failed job's error


NO_TOKEN = "no output token, and no error"


def quote_errors(results: Sequence[RequestResult]) -> str:
    """The first few distinct request errors, quoted, with how many requests had each."""
    counts: Dict[str, int] = {}
    for r in results:
        if r.error or not r.output_tokens:
            error = r.error or NO_TOKEN
            counts[error] = counts.get(error, 0) + 1
    shown = [f"{n}× {error!r}" for error, n in list(counts.items())[:QUOTED_ERRORS]]
    more = len(counts) - len(shown)
    return "; ".join(shown) + (f"; and {more} other distinct error(s)" if more > 0 else "")


def check_some_succeeded(results: Sequence[RequestResult], what: str) -> None:
    """Raise :class:`RequestsFailed` when there were requests and none succeeded (each ended in an error
    or gave no token): such a window measured nothing, and a row of zero throughput would pass for a
    result."""
    if results and all(r.error or not r.output_tokens for r in results):
        raise RequestsFailed(f"no request of the {what} succeeded ({len(results)} asked): {quote_errors(results)}")


def request_bounds(bounds: Dict[str, str]) -> List[Tuple[str, str, float, str]]:
    """(request column, op, limit, the bound as written) for each bound goodput applies per request."""
    out = []
    for key, text in bounds.items():
        m = _STAT.match(key)
        if m:
            out.append((PER_REQUEST[m.group(1)], *parse_bound(text), f"{key}{str(text).strip()}"))
    return out


def _good(row: RequestRow, bounds) -> bool:
    if row.error:
        return False
    return not any(breaks_bound(getattr(row, column), op, limit) for column, op, limit, _ in bounds)


def load_part(results: Sequence[RequestResult], rows: Sequence[RequestRow], window_s: float, config: Any
              ) -> Tuple[LoadMetrics, List[Flag]]:
    import numpy as np

    flags: List[Flag] = []
    out = LoadMetrics(target_requests_per_s=float(config.load.request_rate), load_mode=load_mode(config.load))
    if config.load.trace is not None:
        _trace_part(out, config)
    failed = [r for r in results if r.error]
    out.num_requests_failed = len(failed)
    arrived = sorted(r.arrival_s for r in results if r.arrival_s is not None)
    if config.load.timed and len(arrived) > 1 and arrived[-1] > arrived[0]:
        gaps = np.diff(arrived)
        out.arrivals_per_s = (len(arrived) - 1) / (arrived[-1] - arrived[0])
        out.inter_arrival_s_mean = float(gaps.mean())
        out.inter_arrival_cv = float(gaps.std(ddof=1) / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else None
    flags += _lateness(out, results, window_s)
    queue = [r.queue_ms for r in rows if r.queue_ms is not None]
    if queue:
        out.queue_ms_p50, out.queue_ms_p99 = (float(np.percentile(queue, q)) for q in (50, 99))
    bounds = request_bounds(config.objective.bounds)
    if not bounds:
        out.goodput_null_reason = "objective.bounds sets no TTFT, ITL, TPOT, e2e or queueing bound"
    elif window_s > 0 and rows:
        good = sum(_good(r, bounds) for r in rows)
        out.goodput_requests_per_s, out.goodput_pct = good / window_s, 100.0 * good / len(rows)
        out.goodput_bounds = " ".join(b[3] for b in bounds)
    if failed and 100.0 * len(failed) / len(results) > FAILED_PCT_FLAG:
        flags.append(Flag("requests_failed", (
            f"{len(failed)} of {len(results)} requests failed (over {FAILED_PCT_FLAG:g}%: "
            f"{quote_errors(failed)}): their tokens count, their latencies do not, and goodput counts them "
            "as missed")))
    mismatched = [r for r in results if r.token_count_note]
    if mismatched:
        flags.append(Flag("token_count_mismatch", (
            f"{len(mismatched)} of {len(results)} requests' token counts disagreed with the length asked or the "
            f"tokens streamed (first: {mismatched[0].token_count_note}): each counts what could be verified, "
            "never more than asked (requests.parquet token_count_note)")))
    return out, flags


def _trace_part(out: LoadMetrics, config: Any) -> None:
    """The replayed trace: its file's name and content hash, and its own mean rate as the target."""
    from llem.workload import trace

    whole, lines = trace.load(config.load.trace), trace.replayed(config)
    out.load_trace, out.load_trace_sha256 = whole.name, whole.sha256
    span_s = lines[-1].timestamp_s * config.load.trace_time_scale
    out.target_requests_per_s = (len(lines) - 1) / span_s if span_s > 0 else float("inf")


def late_bound_ms(mode: str, window_s: float) -> float:
    """The p99 lateness past which ``client_late`` is raised. Open loop: CLIENT_LATE_MS. A burst or a closed loop
    has many requests due at one instant (every one, or the first N), which a client sends one after another:
    there the bound is the larger of CLIENT_LATE_MS and BURST_LATE_PCT of the window."""
    if mode == "open":
        return CLIENT_LATE_MS
    return max(CLIENT_LATE_MS, BURST_LATE_PCT / 100.0 * window_s * 1000.0)


def _lateness(out: LoadMetrics, results: Sequence[RequestResult], window_s: float) -> List[Flag]:
    """The client's lateness columns and the ``client_late`` flag, from each request's ``lateness_s`` (sent −
    when it could have been sent). An in-process engine records none: it is handed every request at its due
    time by its own loop, and the wait from there to service is the request's ``queue_ms``."""
    import numpy as np

    late = [r.lateness_s for r in results if r.lateness_s is not None]
    if not late:
        out.client_lateness_null_reason = ("no client: the engine runs in llem's process and takes each request at "
                                           "its due time (its wait for service is queue_ms)")
        return []
    ms = np.asarray(late) * 1000.0
    out.client_lateness_ms_p50, out.client_lateness_ms_p99 = (float(np.percentile(ms, q)) for q in (50, 99))
    out.client_lateness_ms_max = float(ms.max())
    bound = late_bound_ms(out.load_mode, window_s)
    if out.client_lateness_ms_p99 <= bound:
        return []
    return [Flag("client_late", (
        f"requests were sent {out.client_lateness_ms_p99:.1f} ms (p99; max {out.client_lateness_ms_max:.1f} ms) "
        f"after they were due, over the {bound:.3g} ms bound of a {out.load_mode} load: the client fell behind its "
        "schedule, so the load was lighter than asked"))]


def arrival_span(results: Sequence[RequestResult]) -> Tuple[Optional[Tuple[float, float]], str]:
    """The steady state of a timed load: from the 10th-percentile arrival to the last one."""
    arrived = sorted(r.arrival_s for r in results if r.arrival_s is not None)
    if len(arrived) < 3:
        return None, "needs at least three arrivals"
    t0, t1 = arrived[int(RAMP_QUANTILE * (len(arrived) - 1))], arrived[-1]
    if t1 <= t0:
        return None, "the arrivals span no time"
    return (t0, t1), ""


def server_part(endpoint: Any, prompt: Optional[str], api: Optional[str] = None) -> ServerFacts:
    if endpoint is None:
        return ServerFacts(server_mode="none")
    return ServerFacts(server_mode=endpoint.mode, server_url=endpoint.url, server_command=endpoint.command,
                       server_start_s=endpoint.start_s, server_reused=endpoint.reused,
                       num_server_starts=endpoint.starts if endpoint.mode == "launch" else None, server_api=api,
                       server_prompt=prompt, server_log=endpoint.log_path)
