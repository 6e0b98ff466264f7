"""Energy per request by the output_tokens rule (llem.energy.attribution) over the real H100 trace, sampled at
10 Hz as the sampler does: the requests' energies sum to the window's, and each interval goes where the rule says."""

from __future__ import annotations

import pytest

from llem.energy.attribution import output_tokens_rule
from llem.workload.records import RequestResult
from tests.replay import csv_counter_j, csv_row_at, grid, phase_span


def _rows(trace, t0, t1, step=0.1, gpus=(0,)):
    rows = []
    for t in grid(t0, t1, step):
        r = csv_row_at(trace, t)
        for g in gpus:
            rows.append({"t_s": t, "gpu_index": g, "energy_counter_mj": r["energy_counter_mj"],
                         "power_instant_w": r["power_instant_field_mw"] / 1000.0})
    return rows


def _request(i, start, end, n_tokens):
    times = [start + (end - start) * (k + 1) / n_tokens for k in range(n_tokens)]
    return RequestResult(request_id=i, input_tokens=16, output_tokens=n_tokens, start_s=start, end_s=end,
                         first_token_s=times[0], token_times_s=times)


def test_per_request_energy_sums_to_the_window(trace):
    t0, t1 = phase_span(trace, "heavy")
    t0, t1 = t0 + 0.3, t0 + 4.3
    window_j = csv_counter_j(trace, t0, t1)
    results = [_request(0, t0, t0 + 2.0, 40), _request(1, t0 + 0.5, t0 + 3.9, 80), _request(2, t0 + 2.5, t1, 10)]
    shares = output_tokens_rule(_rows(trace, t0, t1), results, t0, t1, window_j, baseline_power_w=100.0)
    raw, adjusted, why = shares.raw_j, shares.adjusted_j, shares.null_reason
    assert why is None
    assert sum(raw) == pytest.approx(window_j, rel=1e-9)
    assert sum(adjusted) == pytest.approx(window_j - 100.0 * (t1 - t0), rel=1e-9)
    assert all(x > 0 for x in raw)
    # where two requests share intervals, the one producing more tokens there pays more
    assert raw[1] > raw[0] > raw[2]


def test_an_idle_gap_is_split_over_every_request(trace):
    t0 = phase_span(trace, "idle_before")[0] + 0.2
    t1 = t0 + 3.0
    window_j = csv_counter_j(trace, t0, t1)
    results = [_request(0, t0, t0 + 1.0, 10), _request(1, t0 + 2.0, t1, 10)]  # nothing in service for 1 s
    raw = output_tokens_rule(_rows(trace, t0, t1), results, t0, t1, window_j, None).raw_j
    assert sum(raw) == pytest.approx(window_j, rel=1e-9)
    assert raw[0] == pytest.approx(raw[1], rel=0.1)  # the same work on a flat idle floor, the gap halved


def test_two_gpus_and_no_energy(trace):
    t0, t1 = phase_span(trace, "light")
    t0, t1 = t0 + 0.2, t0 + 2.2
    mids = [t0 + 0.05 + 0.1 * k for k in range(20)]  # both produce tokens in every interval, 3 to 1
    results = [RequestResult(0, 16, 60, t0, t1, mids[0], [t for t in mids for _ in range(3)]),
               RequestResult(1, 16, 20, t0, t1, mids[0], list(mids))]
    window_j = 2 * csv_counter_j(trace, t0, t1)
    shares = output_tokens_rule(_rows(trace, t0, t1, gpus=(0, 1)), results, t0, t1, window_j, None)
    raw, adjusted = shares.raw_j, shares.adjusted_j
    assert sum(raw) == pytest.approx(window_j, rel=1e-9) and raw[0] == pytest.approx(3 * raw[1], rel=0.05)
    assert adjusted == [None, None]
    assert output_tokens_rule([], results, t0, t1, None, None).null_reason == "no GPU energy"
