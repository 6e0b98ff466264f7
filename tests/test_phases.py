"""Steady-state window, prefill/decode split and warm-up until settled: window bounds from request
timelines, energies from a replayed H100 trace, and the flags when a split is not meaningful."""

from __future__ import annotations

from typing import List

import pytest

from llem.energy import phases
from llem.measure import metrics
from llem.workload.records import RequestResult
from tests.replay import csv_counter_j, make_rig, phase_span, rel_err


def _req(i: int, start: float, end: float, tokens: int = 4) -> RequestResult:
    step = (end - start) / tokens
    times = [start + step * (k + 1) for k in range(tokens)]
    return RequestResult(i, 8, tokens, start, end, times[0], times)


def _static(batches: List[int], batch_s: float = 1.0, gap_s: float = 0.1) -> List[RequestResult]:
    """Static batches (PyTorch): every request of a batch starts and ends together."""
    out, t, i = [], 0.0, 0
    for size in batches:
        for _ in range(size):
            out.append(_req(i, t, t + batch_s))
            i += 1
        t += batch_s + gap_s
    return out


def test_static_batches_steady_state_ends_with_the_last_full_batch():
    span, _ = phases.saturated_span(_static([4, 4, 2]), 4)
    assert span == pytest.approx((0.0, 2.1))  # from the first full batch's start to the second's end


def test_continuous_batching_steady_state_ends_when_the_final_wave_starts_finishing():
    # 2 slots, 5 requests; each new request starts as soon as one ends
    reqs = [_req(0, 0.0, 1.0), _req(1, 0.2, 1.5), _req(2, 1.0, 2.0), _req(3, 1.5, 2.6), _req(4, 2.0, 3.5)]
    span, _ = phases.saturated_span(reqs, 2)
    assert span == pytest.approx((0.2, 2.6))  # both slots busy from 0.2; after 2.6 only request 4 runs
    tokens = phases.tokens_between(reqs, *span)
    inside = sum(1 for r in reqs for t in r.token_times_s if 0.2 <= t <= 2.6)
    assert tokens == inside and 0 < tokens < sum(r.output_tokens for r in reqs)


@pytest.mark.parametrize("reqs, in_flight, why", [
    (_static([4]), 4, "more requests than"),
    (_static([2, 2, 1]), 4, "never held 4"),
])
def test_no_steady_state_says_why(reqs, in_flight, why):
    span, reason = phases.saturated_span(reqs, in_flight)
    assert span is None and why in reason


def test_tokens_unknown_without_token_times():
    reqs = [RequestResult(0, 8, 4, 0.0, 1.0), RequestResult(1, 8, 4, 0.0, 1.0)]
    assert phases.tokens_between(reqs, 0.0, 1.0) is None


def _heavy_rows(trace, n_gpus=1):
    rig = make_rig(trace, n_gpus=n_gpus)
    t0, t1 = phase_span(trace, "heavy")
    rig.window("measure", t0, t1, step=0.1)  # the sampler at its real 10 Hz
    return rig, rig.sampler.rows, t0, t1


def test_steady_state_energy_from_the_interpolated_counter_matches_the_trace(trace):
    _, rows, t0, t1 = _heavy_rows(trace)
    a, b = t0 + 1.03, t1 - 1.47  # edges between samples
    energy, how = phases.energy_between(rows, a, b)
    assert how == "nvml_counter_interpolated"
    # within one counter step (~100 ms of heavy power, ~65 J) at each edge of ~3.5 s at ~650 W
    assert abs(energy - csv_counter_j(trace, a, b)) < 2 * 0.1 * 700
    assert abs(rel_err(energy, csv_counter_j(trace, a, b))) < 0.06


def test_steady_state_energy_sums_gpus(trace):
    _, rows, t0, t1 = _heavy_rows(trace, n_gpus=2)
    one = phases.energy_between([r for r in rows if r["gpu_index"] == 0], t0 + 1, t1 - 1)[0]
    both = phases.energy_between(rows, t0 + 1, t1 - 1)[0]
    assert both == pytest.approx(one + phases.energy_between([r for r in rows if r["gpu_index"] == 1],
                                                             t0 + 1, t1 - 1)[0])


def test_steady_state_falls_back_to_instant_power_without_a_counter(trace):
    _, rows, t0, t1 = _heavy_rows(trace)
    rows = [{**r, "energy_counter_mj": None} for r in rows]
    energy, how = phases.energy_between(rows, t0 + 1, t1 - 1)
    assert how == "nvml_power_instant_integral"
    assert abs(rel_err(energy, csv_counter_j(trace, t0 + 1, t1 - 1))) < 0.03


def test_steady_state_outside_the_time_series_is_null(trace):
    _, rows, t0, t1 = _heavy_rows(trace)
    energy, why = phases.energy_between(rows, t1 + 5, t1 + 6)
    assert energy is None and "does not cover" in why


def test_a_steady_state_without_energy_has_no_null_reason():
    reqs = [_req(i, 0.5 + 1.2 * (i // 2), 1.6 + 1.2 * (i // 2), tokens=10) for i in range(8)]
    s = phases.steady_state(reqs, 2, [], baseline_power_w=None)
    assert s.steady_state_s is not None and s.steady_state_energy_j is None
    assert s.steady_state_null_reason is None


def test_steady_state_columns(trace):
    _, rows, t0, t1 = _heavy_rows(trace)
    reqs = [_req(i, t0 + 0.5 + 1.2 * (i // 2), t0 + 1.6 + 1.2 * (i // 2), tokens=10) for i in range(8)]
    s = phases.steady_state(reqs, 2, rows, baseline_power_w=70.0)
    cols = s
    assert cols.steady_state_s == pytest.approx(1.2 * 3 + 1.1)
    assert cols.steady_state_energy_adjusted_j == pytest.approx(cols.steady_state_energy_j - 70.0 * s.steady_state_s)
    assert cols.steady_state_j_per_output_token == pytest.approx(
        cols.steady_state_energy_adjusted_j / cols.steady_state_output_tokens)
    assert cols.steady_state_null_reason is None
    none = phases.steady_state(reqs[:2], 2, rows, 70.0)
    assert none.steady_state_s is None and none.steady_state_j_per_output_token is None
    assert "more requests" in none.steady_state_null_reason


def test_prefill_decode_split():
    cols, warns = phases.prefill_decode(measured_s=10.0, measured_j=5000.0, prefill_s=1.5, prefill_j=300.0,
                                        baseline_power_w=100.0, input_tokens=1024, output_tokens=1024,
                                        num_requests=8)
    assert warns == []
    assert cols.decode_s == 8.5 and cols.decode_energy_j == 4700.0
    assert cols.prefill_energy_adjusted_j == 150.0 and cols.decode_energy_adjusted_j == 3850.0
    assert cols.prefill_j_per_input_token == pytest.approx(150.0 / 1024)
    assert cols.decode_j_per_output_token == pytest.approx(3850.0 / (1024 - 8))


def test_a_short_prefill_pass_is_flagged_as_coarse():
    cols, warns = phases.prefill_decode(10.0, 5000.0, 0.3, 100.0, 100.0, 1024, 1024, 8)
    assert len(warns) == 1 and "prefill pass lasted 0.30 s" in warns[0]
    assert cols.prefill_energy_j == 100.0  # still reported


@pytest.mark.parametrize("prefill_s, prefill_j, baseline, expect", [
    (10.5, 300.0, 100.0, "not meaningful"),  # the prefill pass took longer than the window
    (1.5, 5200.0, 100.0, "not meaningful"),  # more energy than the window
    (1.5, 300.0, 600.0, "baseline is above"),  # decode power under the baseline
])
def test_prefill_decode_flags_but_never_clips(prefill_s, prefill_j, baseline, expect):
    cols, warns = phases.prefill_decode(10.0, 5000.0, prefill_s, prefill_j, baseline, 1024, 1024, 8)
    assert len(warns) == 1 and expect in warns[0]
    assert cols.decode_energy_j == 5000.0 - prefill_j  # reported as is
    assert cols.decode_s == 10.0 - prefill_s


def test_prefill_decode_without_energy_keeps_times():
    cols, warns = phases.prefill_decode(10.0, None, 0.5, None, None, 1024, 1024, 8)
    assert cols.decode_s == 9.5 and cols.decode_energy_j is None and cols.prefill_j_per_input_token is None
    assert warns == []


def test_cv():
    assert metrics.cv([1.0]) is None
    assert metrics.cv([2.0, 2.0, 2.0]) == 0.0
    assert metrics.cv([1.0, 2.0, 3.0]) == pytest.approx(0.5)
