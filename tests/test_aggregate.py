"""Aggregate a small real sweep (tiny model, CPU): counts, groups, CIs, pooled percentiles, index,
plots, recommendation, and the analysis notebook executed headless."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import MAIN_SWEEP, run_in_process, run_llem

pytestmark = pytest.mark.slow


def test_the_sweep_ran_every_job_once_and_a_rerun_skips_them(main_sweep, tmp_path):
    sweep, out = main_sweep
    rows = {p.parent.name: pd.read_parquet(p).iloc[0] for p in sweep.glob("*/results.parquet")}
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    assert sorted(r["cfg.batch"] for r in rows.values()) == [1, 1, 2, 2]
    assert all(f"batch={r['cfg.batch']}" in name.split(",") for name, r in rows.items())  # readable dirs
    assert "4 ok, 0 skipped, 0 failed" in out and (sweep / ".llem-index" / "runs.parquet").is_file()
    rerun = run_llem([*MAIN_SWEEP, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert rerun.returncode == 0 and "0 ok, 4 skipped, 0 failed" in rerun.stdout + rerun.stderr
    assert "loading" not in rerun.stdout + rerun.stderr  # resumed: nothing measured again


def test_dry_run_runs_nothing_and_says_what_would(main_sweep, tmp_path):
    sweep, _ = main_sweep
    before = sorted(str(p) for p in sweep.rglob("*"))
    args = [*MAIN_SWEEP[:-1], "batch=1,2,3,0", "dry_run=true", f"hydra.sweep.dir={sweep}"]
    proc = run_llem(args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("would be skipped") == 4 and out.count("would run on cpu") == 2, out
    assert out.count("invalid: batch=0 is invalid") == 2 and proc.returncode == 1
    assert sorted(str(p) for p in sweep.rglob("*")) == before  # nothing written, nothing removed
    assert "loading" not in out


def _as_older_llem(job: Path) -> None:
    """Rewrite a job's result as an earlier llem wrote it: no schema version, memory columns named _mb, a
    column it did not have, and every null column typed as text (the writer typed unknown nulls as strings)."""
    table = pq.read_table(job / "results.parquet").drop_columns(["peak_power_w", "schema_version"])
    table = table.rename_columns([n.replace("_mib", "_mb") for n in table.column_names])
    for i, field in enumerate(table.schema):
        if table.column(i).null_count == table.num_rows and not pa.types.is_list(field.type):
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
    pq.write_table(table, job / "results.parquet")


@pytest.fixture(scope="module")
def dirs(main_sweep, compose_cfg, tmp_path_factory):
    """The shared sweep (2 configs × 2 repeats), a failed run, an incomplete job, a job from an 'older'
    llem, and three jobs whose results cannot be used (0 rows, 2 rows, corrupt)."""
    root = tmp_path_factory.mktemp("agg")
    sweep = root / "sweep"
    shutil.copytree(main_sweep[0], sweep)
    shutil.rmtree(sweep / ".llem-index")
    run_in_process(compose_cfg, ["model.architecture.intermediate_size=2000000000000"], root / "runs" / "failed")
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.parquet").is_file())
    shutil.copytree(jobs[0] / ".hydra", sweep / "zz-incomplete" / ".hydra")
    shutil.copytree(jobs[0], sweep / "zz-older")
    _as_older_llem(sweep / "zz-older")
    one = pq.read_table(jobs[0] / "results.parquet")
    for name, table in (("zz-zero-rows", one.slice(0, 0)), ("zz-two-rows", pa.concat_tables([one, one]))):
        (sweep / name).mkdir()
        pq.write_table(table, sweep / name / "results.parquet")
    (sweep / "zz-corrupt").mkdir()
    (sweep / "zz-corrupt" / "results.parquet").write_bytes(b"PAR1 not really")
    return root


@pytest.fixture(scope="module")
def out(dirs):
    proc = subprocess.run([sys.executable, "-m", "llem.aggregate", "sweep", "runs", "-o", "out", "--plots",
                           "--slo", "ttft_ms_p99<=10000"], cwd=dirs, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dirs, proc.stdout + proc.stderr


def test_runs_count_every_job_with_its_status(out):
    root, text = out
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    assert len(runs) == 10
    assert runs["status"].value_counts().to_dict() == {"ok": 5, "failed": 1, "incomplete": 4}
    assert runs["sweep_dir"].notna().sum() == 9 and runs["job_id"].is_unique
    assert "5 of 10 jobs did not succeed" in text
    assert "lack 2 column(s) (peak_power_w, schema_version)" in text  # the older job: warned, null there
    older = runs[runs["job_id"] == "zz-older"].iloc[0]
    assert pd.isna(older["peak_power_w"]) and older["status"] == "ok" and older["cpu_rss_peak_mib"] > 0  # renamed
    assert str(runs["engine.compile_s"].dtype) == "float64"  # text nulls of the older file did not win
    incomplete = runs[runs["job_id"] == "zz-incomplete"].iloc[0]
    assert incomplete["cfg.batch"] == runs[runs["status"] == "ok"]["cfg.batch"].min()  # config from .hydra
    for job, why in (("zz-incomplete", "never finished"), ("zz-zero-rows", "holds 0 rows, expected 1"),
                     ("zz-two-rows", "holds 2 rows, expected 1"), ("zz-corrupt", "results.parquet is unreadable")):
        assert re.search(rf"not used: \S*{job}: [^\n]*{why}", text), (job, text)


def test_groups_are_configs_without_repeat_and_seed(out):
    root, _ = out
    summary = pd.read_parquet(root / "out" / "summary.parquet")
    runs = pd.read_parquet(root / "out" / "runs.parquet")
    assert "cfg.repeat" not in summary.columns and "cfg.seed" not in summary.columns
    ok = summary[summary["n_ok"] > 0].set_index("cfg.batch")
    assert sorted(ok.index) == [1, 2]
    assert ok.loc[1, "n_ok"] + ok.loc[2, "n_ok"] == 5  # 2 + 2 repeats, + the older copy of one job
    assert summary["n_failed"].sum() == 1 and summary["n_incomplete"].sum() == 4
    for name in ("runs", "summary"):  # typed as declared even where no job raised a flag
        assert pq.read_schema(root / "out" / f"{name}.parquet").field("flags").type == pa.list_(pa.string())
    assert (summary["flagged"] == summary["flags"].map(len).gt(0)).all()
    assert runs.groupby("config_key")["cfg.repeat"].nunique().max() >= 2


def test_ci_contains_mean_and_energy_stays_null(out):
    root, _ = out
    summary = pd.read_parquet(root / "out" / "summary.parquet")
    s = summary[summary["n_ok"] >= 2]
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
    pngs = sorted((root / "out" / "figures").glob("*.png"))  # --plots alone: <out>/figures
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

    sweep = dirs / "sweep"
    assert (sweep / ".llem-index" / "runs.parquet").is_file()
    job = sorted(p for p in sweep.iterdir() if not p.name.startswith("zz-") and (p / "results.parquet").is_file())[0]
    table = pq.read_table(job / "results.parquet")
    i = table.column_names.index("output_tok_per_s")
    pq.write_table(table.set_column(i, "output_tok_per_s", pa.array([123456.0])), job / "results.parquet")
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
