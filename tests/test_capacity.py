"""Capacity over a rate sweep (llem.aggregate.capacity) on summaries shaped like the aggregate's."""

from __future__ import annotations

import math

import pandas as pd

from llem.aggregate.capacity import capacity_text
from llem.aggregate.recommend import parse_bounds


def _summary(ttft_p99, flags=None):
    rates = [1.0, 2.0, 4.0, math.inf][: len(ttft_p99)]
    rows = []
    for i, (rate, ttft) in enumerate(zip(rates, ttft_p99)):
        rows.append({"config_key": f"k{i}", "cfg.backend.name": "vllm", "cfg.model.name": "llama3",
                     "cfg.load.request_rate": rate, "ttft_ms_p99": ttft, "requests_per_s_mean": min(rate, 9.0) * 0.98,
                     "j_per_output_token_mean": 0.5 / (i + 1), "j_per_output_token_ci95_low": 0.4 / (i + 1),
                     "j_per_output_token_ci95_high": 0.6 / (i + 1), "j_per_request_mean": 60.0 / (i + 1),
                     "j_per_request_ci95_low": 50.0 / (i + 1), "j_per_request_ci95_high": 70.0 / (i + 1),
                     "flagged": bool(flags and flags[i]), "flags": "short_window 1/1" if flags and flags[i] else "",
                     "n_flagged": 1 if flags and flags[i] else 0})
    return pd.DataFrame(rows)


def test_the_highest_rate_meeting_the_bound_with_its_cis():
    text = capacity_text(_summary([50, 80, 400, 2000]), parse_bounds(["ttft_p99_ms<=200"]))
    assert "== capacity under ttft_ms_p99<=200" in text  # the unit-last spelling is read as the column
    assert "model.name=llama3: 2 req/s, 1.96 req/s achieved; J/token 0.25 J [95% CI 0.2, 0.3]" in text
    assert "J/request 30 J [95% CI 25, 35]; ttft_ms_p99=80" in text


def test_every_rate_meeting_says_the_capacity_was_not_found():
    text = capacity_text(_summary([5, 6, 7, 8]), parse_bounds(["ttft_ms_p99<=200"]))
    assert "capacity not found: the highest rate tried, 4 req/s, still met it — try higher rates" in text


def test_no_rate_meeting_is_said():
    text = capacity_text(_summary([500, 600]), parse_bounds(["ttft_ms_p99<=200"]))
    assert "no rate tried meets every bound (from 1 req/s)" in text


def test_a_burst_meeting_the_bound_is_shown_but_never_the_capacity():
    """At inf every request is due at once: it is no rate, whatever its TTFT."""
    text = capacity_text(_summary([50, 80, 400, 150]), parse_bounds(["ttft_ms_p99<=200"]))
    assert "model.name=llama3: 2 req/s" in text
    assert "inf (burst: every request at once) meets the bounds; not a rate, so never the capacity" in text


def test_a_closed_loop_is_shown_but_never_the_capacity():
    summary = _summary([50, 80, 150, 150])
    summary["cfg.load.max_concurrency"] = [None, None, None, 8]
    text = capacity_text(summary, parse_bounds(["ttft_ms_p99<=200"]))
    assert "the highest rate tried, 4 req/s, still met it" in text
    assert "inf (closed loop, 8 in flight) meets the bounds; not a rate" in text


def test_a_flagged_capacity_shows_its_flags_and_no_rate_sweep_gives_none():
    text = capacity_text(_summary([50, 80, 400], flags=[False, True, False]), parse_bounds(["ttft_ms_p99<=200"]))
    assert "2 req/s" in text and "doubt-flagged" in text
    one = _summary([50])
    assert capacity_text(one, parse_bounds(["ttft_ms_p99<=200"])) is None
