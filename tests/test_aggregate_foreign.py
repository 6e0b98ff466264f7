"""Aggregate on Parquet files written by pandas, not by llem: a known column of a type llem never writes
leaves that job out with a warning naming the column, the rest aggregated; a bound on a column that is not
a number is one clear line and exit status 2."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.aggregate import aggregate
from llem.aggregate.__main__ import main


def _job(root, name, batch, **extra):
    row = {"status": "ok", "cfg.backend.name": "pytorch", "cfg.model.name": "m", "cfg.batch": batch,
           "j_per_output_token": 0.5 / batch, "output_tok_per_s": 100.0 * batch, "flags": ["short_window"]}
    row.update(extra)
    (root / name).mkdir(parents=True)
    pd.DataFrame([row]).to_parquet(root / name / "results.parquet")


@pytest.fixture
def jobs(tmp_path):
    _job(tmp_path / "runs", "b1", 1)
    _job(tmp_path / "runs", "b2", 2)
    return tmp_path / "runs"


def test_an_int_flags_column_leaves_that_job_out_with_a_warning(jobs):
    _job(jobs, "b4", 4, flags=1)
    agg = aggregate([jobs])
    ok = agg.runs[agg.runs["status"] == "ok"]
    assert sorted(ok["cfg.batch"]) == [1, 2]
    assert any("b4" in w and "'flags' holds int64" in w for w in agg.warnings), agg.warnings


def test_words_in_a_number_column_leave_that_job_out(jobs):
    _job(jobs, "b4", 4, output_tok_per_s="fast")
    agg = aggregate([jobs])
    assert sorted(agg.runs[agg.runs["status"] == "ok"]["cfg.batch"]) == [1, 2]
    assert any("'output_tok_per_s' holds" in w and "double" in w for w in agg.warnings), agg.warnings


def test_a_status_llem_never_writes_leaves_that_job_out(jobs):
    _job(jobs, "b4", 4, status=3)
    agg = aggregate([jobs])
    assert any("status '3'" in w for w in agg.warnings), agg.warnings


def test_a_row_with_no_configuration_columns_leaves_that_job_out(jobs):
    (jobs / "stray").mkdir()
    pd.DataFrame([{"status": "ok", "x": 1}]).to_parquet(jobs / "stray" / "results.parquet")
    agg = aggregate([jobs])
    assert any("stray" in w and "no cfg.* column" in w for w in agg.warnings), agg.warnings
    assert sorted(agg.runs["status"]) == ["incomplete", "ok", "ok"]  # counted as not done, never averaged in


@pytest.mark.parametrize("bound, column", [("flags<=1", "flags"), ("cfg.model.name>=0", "cfg.model.name")])
def test_a_bound_on_a_column_that_is_no_number_is_refused(jobs, tmp_path, capsys, bound, column):
    with pytest.raises(SystemExit) as stop:
        main([str(jobs), "-o", str(tmp_path / "out"), "--quiet", "--slo", bound])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--slo: {column!r} is not a number" in err and "numeric results column" in err
    assert not (tmp_path / "out" / "summary.parquet").exists()
