"""Aggregate a small real sweep (tiny model, CPU): counts, groups, CIs, pooled percentiles, index,
plots, recommendation, and the analysis notebook executed headless."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAST, run_llem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A 2-config × 3-repeat sweep, a failed run, an incomplete job, and a job from an 'older' llem."""
    root = tmp_path_factory.mktemp("agg")
    run_llem(["-m", *FAST, "repeat=0,1,2", "batch=1,2", "hydra.sweep.dir=sweep"], cwd=root, check=True)
    run_llem([*FAST, "model.architecture.intermediate_size=-5", "hydra.run.dir=runs/failed"], cwd=root)
    sweep = root / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.parquet").is_file())
    incomplete = sweep / "zz-incomplete"
    shutil.copytree(jobs[0] / ".hydra", incomplete / ".hydra")
    older = sweep / "zz-older"
    shutil.copytree(jobs[0], older)
    table = pq.read_table(older / "results.parquet")
    pq.write_table(table.drop_columns(["peak_power_w", "cpu_rss_peak_mb"]), older / "results.parquet")
    return root


@pytest.fixture(scope="module")
def out(dirs):
    proc = subprocess.run([sys.executable, "-m", "llem.aggregate", "sweep", "runs", "-o", "out", "--plots", "plots",
                           "--slo", "ttft_ms_p99<=10000"], cwd=dirs, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dirs, proc.stdout + proc.stderr


def test_runs_count_every_job_with_its_status(out):
    root, text = out
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    assert len(runs) == 9
    assert runs["status"].value_counts().to_dict() == {"ok": 7, "failed": 1, "incomplete": 1}
    assert runs["sweep_dir"].notna().sum() == 8 and runs["job_id"].is_unique
    assert "2 of 9 jobs did not succeed" in text
    assert "lack 2 column(s)" in text  # the older job: warned, its missing columns are null
    older = runs[runs["job_id"] == "zz-older"].iloc[0]
    assert pd.isna(older["peak_power_w"]) and older["status"] == "ok"
    incomplete = runs[runs["job_id"] == "zz-incomplete"].iloc[0]
    assert incomplete["cfg.batch"] == runs[runs["status"] == "ok"]["cfg.batch"].min()  # config from .hydra


def test_groups_are_configs_without_repeat_and_seed(out):
    root, _ = out
    summary = pd.read_parquet(root / "out" / "summary.parquet")
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    assert "cfg.repeat" not in summary.columns and "cfg.seed" not in summary.columns
    ok = summary[summary["n_ok"] > 0].set_index("cfg.batch")
    assert sorted(ok.index) == [1, 2]
    assert ok.loc[1, "n_ok"] + ok.loc[2, "n_ok"] == 7  # 3 + 3 repeats, + the older copy of one job
    assert summary["n_failed"].sum() == 1 and summary["n_incomplete"].sum() == 1
    assert runs.groupby("config_key")["cfg.repeat"].nunique().max() >= 3


def test_ci_contains_mean_and_energy_stays_null(out):
    root, _ = out
    summary = pd.read_parquet(root / "out" / "summary.parquet")
    s = summary[summary["n_ok"] >= 3]
    assert len(s) == 2
    assert (s["output_tok_per_s_ci95_low"] <= s["output_tok_per_s_mean"]).all()
    assert (s["output_tok_per_s_mean"] <= s["output_tok_per_s_ci95_high"]).all()
    assert s["output_tok_per_s_std"].gt(0).all()
    assert s["j_per_output_token_mean"].isna().all()  # no NVML here: null, never 0


def test_pooled_percentiles_equal_numpy_over_raw_rows(out):
    root, _ = out
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    summary = pd.read_parquet(root / "out" / "summary.parquet").set_index("config_key")
    for key, jobs in runs[runs["status"] == "ok"].groupby("config_key"):
        reqs = pd.concat([pd.read_parquet(f"{d}/requests.parquet") for d in jobs["job_dir"]])
        gaps = np.concatenate([np.asarray(x) for x in reqs["itl_ms"]])
        assert summary.loc[key, "ttft_ms_p50"] == pytest.approx(np.percentile(reqs["ttft_ms"], 50))
        assert summary.loc[key, "ttft_ms_p99"] == pytest.approx(np.percentile(reqs["ttft_ms"], 99))
        assert summary.loc[key, "itl_ms_p50"] == pytest.approx(np.percentile(gaps, 50))
        per_job_mean = jobs["ttft_ms_p50"].mean()
        assert summary.loc[key, "ttft_ms_p50_mean"] == pytest.approx(per_job_mean)


def test_requests_keyed_to_jobs(out):
    root, _ = out
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    reqs = pd.read_parquet(root / "out" / "requests.parquet")
    per_job = reqs.groupby("job_key").size()
    ok = runs[runs["status"] == "ok"].set_index("job_key")
    assert (per_job.reindex(ok.index) == ok["num_requests"]).all()


def test_plots_are_pngs(out):
    root, _ = out
    pngs = sorted((root / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"j_per_token_vs_batch.png", "throughput_vs_j_per_token.png",
                                      "latency_distributions.png"}
    assert any(p.name.startswith("power_") for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_slo_without_energy_says_so(out):
    _, text = out
    assert "energy was not measured" in text


def test_index_picks_up_a_rerun_job(dirs, tmp_path):
    """The sweep index is used, but a job whose files changed is read again."""
    from llem.aggregate import aggregate
    from llem.results import read_result, write_result

    sweep = dirs / "sweep"
    assert (sweep / ".llem-index" / "runs.parquet").is_file()
    job = sorted(p for p in sweep.iterdir() if p.name.startswith("baseline"))[0]
    row = read_result(job)
    row["output_tok_per_s"] = 123456.0
    write_result(row, job)
    runs = aggregate([sweep]).runs
    assert runs.loc[runs["job_dir"] == str(job), "output_tok_per_s"].item() == 123456.0
    shutil.rmtree(sweep / ".llem-index")
    assert aggregate([sweep]).runs.set_index("job_id").sort_index().equals(runs.set_index("job_id").sort_index())


def test_notebook_runs_end_to_end(out, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    root, _ = out
    monkeypatch.setenv("LLEM_AGGREGATE_DIR", str(root / "out"))
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()  # raises if a cell fails
    assert (root / "out" / "figures" / "power.png").is_file()
