"""Aggregate logic on synthetic numbers: bootstrap, Pareto front, bounds, recommendation, doubt flags."""

from __future__ import annotations

import json

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
    cols = ["cfg.batch", "cfg.repeat", "cfg.seed", "cfg.isolate", "cfg.objective.metric", "status", "cfg.model.name",
            "cfg.sweep.order", "cfg.sweep.seed"]
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


# --- doubt flags ---------------------------------------------------------------------------------

def _runs_with_flags():
    """Six successful jobs of three configurations: a, unflagged; b, 2 of 3 repeats flagged; c, an older
    llem's job (flags null) and one with flags written as text by some other version."""
    return pd.DataFrame({
        "config_key": ["a", "a", "b", "b", "b", "c", "c"],
        "flags": [np.array([], dtype=object), [], ["short_window", "throttled"], ["short_window"], [],
                  None, "['mig']"],
    })


def test_flags_summarised_per_configuration():
    from llem.aggregate.doubt import summarise_flags

    cols = summarise_flags(_runs_with_flags(), ["a", "b", "c", "d"])
    assert cols["flagged"] == [False, True, True, False]
    assert cols["n_flagged"] == [0, 2, 1, 0]
    assert cols["flags"] == [[], ["short_window", "throttled"], ["mig"], []]
    assert [json.loads(t) for t in cols["flag_repeats"]] == [{}, {"short_window": 2, "throttled": 1}, {"mig": 1}, {}]
    older = summarise_flags(pd.DataFrame({"config_key": ["a"]}), ["a"])  # no flags column at all
    assert older["flagged"] == [False] and older["flags"] == [[]]


def test_flag_text_counts_repeats_when_not_all_raised_it():
    from llem.aggregate.doubt import MEANINGS, explain, flag_text

    row = {"n_ok": 3, "flags": ["a", "b", "c", "d"], "flag_repeats": json.dumps({"a": 3, "b": 2, "c": 1, "d": 3})}
    assert flag_text(row) == "a, b 2/3, c 1/3, +1"
    assert flag_text(row, limit=0) == "a, b 2/3, c 1/3, d"
    old = {"flags": ["short_window"]}  # a summary written before the counts: codes only
    assert flag_text(old) == "short_window"
    assert explain({"n_ok": 3, "flag_repeats": json.dumps({"short_window": 2, "new_code": 3})}) == [
        "new_code (3 of 3 repeats): see docs/method.md (Doubt flags) and the job's warnings",
        f"short_window (2 of 3 repeats): {MEANINGS['short_window']}"]


def _flagged_summary():
    """_summary() with flags: batch 32 (the lowest J/token meeting the bounds below) flagged in 2 of 3 repeats."""
    df = _summary()
    df["n_ok"] = df["n_jobs"] = 3
    flags = {32: {"short_window": 2}, 64: {"throttled": 3}}
    df["flag_repeats"] = [json.dumps(flags.get(b, {})) for b in df["cfg.batch"]]
    df["flags"] = [sorted(flags.get(b, {})) for b in df["cfg.batch"]]
    df["flagged"] = [b in flags for b in df["cfg.batch"]]
    df["n_flagged"] = [max(flags.get(b, {0: 0}).values()) for b in df["cfg.batch"]]
    return df


def test_table_marks_flagged_rows_and_says_what_the_mark_means():
    from llem.aggregate.report import summary_table

    lines = summary_table(_flagged_summary()).splitlines()
    header = lines[0]
    assert header.split()[-1] == "flags"
    by_batch = {int(line.split()[3 if line.startswith("!") else 2]): line for line in lines[1:6]}
    assert by_batch[32].startswith("!") and by_batch[32].rstrip().endswith("short_window 2/3")
    assert by_batch[64].startswith("!") and by_batch[64].rstrip().endswith("throttled")
    assert not by_batch[8].startswith("!") and "short_window" not in by_batch[8]
    assert lines[-2].startswith("! doubt-flagged") and "--warnings" in lines[-1] and "docs/method.md" in lines[-1]
    clean = _flagged_summary().assign(flagged=False, flags=[[]] * 5, flag_repeats="{}", n_flagged=0)
    text = summary_table(clean)
    assert text.splitlines()[0].split()[-1] == "flags" and "!" not in text and text.endswith("no doubt flags raised")
    assert all(line.rstrip().endswith("–") for line in text.splitlines()[1:6])  # the column is there, empty
    older = summary_table(_summary().assign(n_ok=3, n_jobs=3))  # a summary.parquet from before flags
    assert "flags" not in older


def test_table_counts_flagged_rows_beyond_the_ones_shown():
    from llem.aggregate.report import summary_table

    text = summary_table(_flagged_summary().sort_values("cfg.batch"), max_rows=3)  # 1, 8, 16 shown
    assert "… 2 more configurations in summary.parquet (2 of them flagged)" in text


def test_recommendation_spells_out_flags_and_names_the_best_unflagged():
    from llem.aggregate.doubt import MEANINGS

    text = recommend_text(_flagged_summary(), parse_bounds(["ttft_ms_p99<=500", "output_tok_per_s>=100"]))
    after = text.split("recommended: ")[1].splitlines()
    assert "batch=32" in after[0]
    assert after[1].startswith("  ! doubt-flagged: 2 of 3 repeats raised a flag, so its numbers may be off")
    assert after[2].strip() == f"short_window (2 of 3 repeats): {MEANINGS['short_window']}"
    assert after[3].startswith("  best unflagged meeting every bound (+150 % J/token): backend.name=pytorch batch=8:")
    front = [line for line in text.splitlines() if "batch=64" in line]
    assert front and front[0].endswith("! flags: throttled")


def test_recommendation_of_unflagged_only_names_a_lower_flagged_one():
    bounds = parse_bounds(["ttft_ms_p99<=500", "output_tok_per_s>=100"])
    text = recommend_text(_flagged_summary(), bounds, unflagged=True)
    after = text.split("recommended: ")[1].splitlines()
    assert "batch=8" in after[0] and "0.5 J/token" in after[0]
    assert after[1] == "  a doubt-flagged configuration reads lower (-60 % J/token), not recommended:"
    assert "batch=32: 0.2 J/token" in after[2] and "short_window (2 of 3 repeats)" in after[4]
    only_flagged = recommend_text(_flagged_summary(), parse_bounds(["output_tok_per_s>=920"]), unflagged=True)
    assert "recommended:" not in only_flagged
    assert "no unflagged configuration meets every bound; the best flagged one:" in only_flagged
    assert "batch=64" in only_flagged.split("the best flagged one:")[1] and "throttled (3 of 3 repeats)" in only_flagged


def test_unflagged_best_is_recommended_without_a_flag_note():
    text = recommend_text(_flagged_summary(), parse_bounds(["ttft_ms_p99<=100"]))  # batch 8 and 1 meet it
    after = text.split("recommended: ")[1].splitlines()
    assert "batch=8" in after[0] and len(after) == 1


def test_conform_types_an_all_null_text_list_column_as_declared():
    import pyarrow as pa

    from llem.aggregate.conform import conform

    old = pa.table({"status": ["ok"], "flags": pa.nulls(1, pa.string()), "warnings": pa.nulls(1, pa.string())})
    fixed = conform(old)
    assert fixed.schema.field("flags").type == pa.list_(pa.string())
    assert fixed.column("flags").to_pylist() == [None]
    kept = conform(pa.table({"status": ["ok"], "flags": ["short_window"]}))  # not null: left for concat to warn
    assert kept.schema.field("flags").type == pa.string()


def test_plots_draw_flagged_configurations_hollow_with_a_legend_entry():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from llem.aggregate.plot_parts import FLAGGED_HOLLOW
    from llem.aggregate.plots import per_batch_figure, tradeoff_figure

    df = _flagged_summary()
    df["output_tok_per_s_ci95_low"] = df["output_tok_per_s_ci95_high"] = df["output_tok_per_s_mean"]
    for fig in (per_batch_figure(df), tradeoff_figure(df)):
        for ax in fig.axes:
            markers = [line for line in ax.lines if line.get_marker() == "o"]
            hollow = [line for line in markers if line.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))]
            assert sum(len(line.get_xdata()) for line in hollow) == 2  # batches 32 and 64
            assert sum(len(line.get_xdata()) for line in markers) == 5
            assert FLAGGED_HOLLOW in [t.get_text() for t in ax.get_legend().get_texts()]
        plt.close(fig)
    clean = per_batch_figure(_summary().assign(output_tok_per_s_ci95_low=np.nan, output_tok_per_s_ci95_high=np.nan))
    assert all(FLAGGED_HOLLOW not in [t.get_text() for t in ax.get_legend().get_texts()] for ax in clean.axes)
    plt.close(clean)


def test_power_plot_title_names_the_jobs_flags():
    from llem.aggregate.plots import power_title

    row = pd.Series({"job_id": "batch=32", "gpu_energy_j": 700.0, "window_s": 0.75, "j_per_output_token": 0.2,
                     "flags": np.array(["short_window"], dtype=object)})
    assert power_title(row).splitlines() == ["batch=32 — window 0.75 s, 700 J raw, 0.2 J/token",
                                             "! doubt-flagged: short_window (warnings in runs.parquet)"]
    assert "\n" not in power_title(row.drop("flags"))  # an older llem's job


def test_untyped_columns_written_as_declared():
    import pyarrow as pa

    from llem.aggregate.conform import untyped_as_declared

    runs = pa.Table.from_pandas(pd.DataFrame({"flags": [[], []], "error": [None, None], "cfg.x": [None, None]}))
    assert runs.schema.field("flags").type == pa.list_(pa.null())  # what pandas makes of flags no job raised
    typed = untyped_as_declared(runs)
    assert typed.schema.field("flags").type == pa.list_(pa.string()) and typed.column("flags").to_pylist() == [[], []]
    assert typed.schema.field("error").type == pa.string()
    assert typed.schema.field("cfg.x").type == pa.null()  # undeclared: left as it is
