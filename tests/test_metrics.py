"""Latency statistics from raw per-request timings."""

from __future__ import annotations

import numpy as np

from llem.measure.metrics import latency_summary, request_rows
from llem.workload.records import RequestResult


def _result(i, start, times):
    return RequestResult(
        request_id=i,
        input_tokens=4,
        output_tokens=len(times),
        start_s=start,
        end_s=times[-1],
        first_token_s=times[0],
        token_times_s=times,
        batch_index=0,
    )


def test_request_rows_and_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    results = []
    for i in range(7):
        start = 10.0 + i
        times = list(start + np.cumsum(rng.uniform(0.005, 0.05, size=6)))
        results.append(_result(i, start, times))
    rows = request_rows(results, window_t0=10.0)
    assert rows[3].start_offset_s == 3.0
    ttft = [(r.first_token_s - 10.0) * 1000 for r in results]  # no due time named: due at the window's start
    itl = [(b - a) * 1000 for r in results for a, b in zip(r.token_times_s, r.token_times_s[1:])]
    s = latency_summary(rows)
    assert np.isclose(s.ttft_ms_p50, np.percentile(ttft, 50))
    assert np.isclose(s.ttft_ms_p99, np.percentile(ttft, 99))
    assert np.isclose(s.itl_ms_p50, np.percentile(itl, 50))
    assert np.isclose(s.itl_ms_mean, np.mean(itl))
    r0 = results[0]
    assert np.isclose(rows[0].tpot_ms, (r0.end_s - r0.first_token_s) * 1000 / 5)
    assert len(rows[0].itl_ms) == 5


def test_missing_timings_are_null_not_zero():
    r = RequestResult(
        request_id=0,
        input_tokens=4,
        output_tokens=3,
        start_s=1.0,
        end_s=2.0,
        timing_note="engine reports no token times",
    )
    rows = request_rows([r], 1.0)
    assert rows[0].ttft_ms is None and rows[0].itl_ms is None
    s = latency_summary(rows)
    assert s.ttft_ms_p50 is None and s.itl_ms_p50 is None
    assert s.e2e_ms_p50 == 1000.0


def test_latency_counts_from_the_due_time_queueing_included():
    """A request due at 10 s (its arrival at a rate, the call's start in a burst, a freed slot in a closed loop)
    that waited 2 s for a slot: its TTFT and e2e include the wait, as a client sees them."""
    due = RequestResult(request_id=0, input_tokens=4, output_tokens=2, start_s=12.0, end_s=12.5,
                        first_token_s=12.1, token_times_s=[12.1, 12.5], arrival_s=10.0)
    (a,) = request_rows([due], window_t0=9.0)
    assert round(a.queue_ms) == 2000 and round(a.ttft_ms) == 2100 and round(a.e2e_ms) == 2500
    assert round(a.tpot_ms) == 400


def test_a_result_without_a_due_time_counts_from_the_window_start_never_its_admission():
    unnamed = RequestResult(request_id=1, input_tokens=4, output_tokens=2, start_s=12.0, end_s=12.5,
                            first_token_s=12.1, token_times_s=[12.1, 12.5])
    (b,) = request_rows([unnamed], window_t0=10.0)
    assert round(b.queue_ms) == 2000 and round(b.ttft_ms) == 2100 and round(b.e2e_ms) == 2500
