"""Aggregate logic on synthetic numbers: bootstrap, Pareto front, bounds, recommendation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llem.aggregate.recommend import pareto_front, parse_bounds, recommend_text
from llem.aggregate.stats import bootstrap_ci, group_columns


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    groups = [rng.normal(10, 1, n) for n in (2, 3, 3, 5, 1, 0)]
    a, b = bootstrap_ci(groups, seed=0), bootstrap_ci(groups, seed=0)
    assert np.array_equal(a, b, equal_nan=True)
    wide = [rng.normal(10, 1, 30)]
    assert not np.array_equal(bootstrap_ci(wide, seed=0), bootstrap_ci(wide, seed=1))
    for g, (lo, hi) in zip(groups[:4], a[:4]):
        assert lo <= g.mean() <= hi and lo >= g.min() and hi <= g.max()
    assert np.isnan(a[4]).all() and np.isnan(a[5]).all()  # n < 2: no CI


def test_bootstrap_ci_narrows_with_more_repeats():
    rng = np.random.default_rng(2)
    few, many = bootstrap_ci([rng.normal(0, 1, 4), rng.normal(0, 1, 400)], seed=0)
    assert (many[1] - many[0]) < (few[1] - few[0]) / 3


def test_group_columns_exclude_repeat_seed_and_switches():
    cols = ["cfg.batch", "cfg.repeat", "cfg.seed", "cfg.isolate", "cfg.objective.metric", "status", "cfg.model.name"]
    assert group_columns(cols) == ["cfg.batch", "cfg.model.name"]


def _summary():
    rows = [  # batch, J/token, tok/s, ttft p99
        (1, 3.0, 40.0, 30.0), (8, 0.5, 300.0, 60.0), (32, 0.2, 900.0, 400.0), (64, 0.15, 950.0, 900.0),
        (16, 0.6, 200.0, 100.0),  # dominated by batch 8 on both axes
    ]
    df = pd.DataFrame(rows, columns=["cfg.batch", "j_per_output_token_mean", "output_tok_per_s_mean", "ttft_ms_p99"])
    df["cfg.model.name"] = "llama3"
    df["cfg.backend.name"] = "pytorch"
    df["j_per_output_token_ci95_low"] = df["j_per_output_token_mean"] * 0.95
    df["j_per_output_token_ci95_high"] = df["j_per_output_token_mean"] * 1.05
    df["j_per_output_token_n"] = 3
    return df


def test_pareto_front_drops_dominated_points():
    front = pareto_front(_summary(), "ttft_ms_p99", higher_is_better=False)
    assert list(front["cfg.batch"]) == [64, 32, 8, 1]


def test_recommend_lowest_energy_meeting_every_bound():
    text = recommend_text(_summary(), parse_bounds(["ttft_ms_p99<=500", "output_tok_per_s>=100"]))
    recommended = [line for line in text.splitlines() if "recommended" in line][0]
    assert "batch=32" in recommended and "0.2 J/token" in recommended and "95% CI 0.19, 0.21" in recommended
    none = recommend_text(_summary(), parse_bounds(["ttft_ms_p99<=10"]))
    assert "no configuration meets every bound" in none


def test_bad_bounds_are_clear():
    with pytest.raises(ValueError, match="METRIC<=NUMBER"):
        parse_bounds(["ttft<500"])
    with pytest.raises(ValueError, match="unknown metric"):
        recommend_text(_summary(), parse_bounds(["nonsense<=1"]))
