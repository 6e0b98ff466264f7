"""Sweeps: multirun through the real launchers, failures as rows, resume, dry runs, secrets, sweeper
objectives (signals and the sweep lock: tests/test_sweep_signals.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST, llem_env, run_llem

pytestmark = pytest.mark.slow
SECRET, KEY = "hf_NotARealSecret42xyz", "sk-AlsoNotReal-77abc"


def _results(sweep: Path) -> dict:
    return {p.parent.name: pd.read_parquet(p).iloc[0] for p in sweep.glob("*/results.parquet")}


def _starts(job_dir: Path) -> int:
    """How many times the job began measuring (its log is appended to by every run)."""
    return sum(" backend=" in line and "] - job " in line for line in (job_dir / "llem.log").read_text().splitlines())


def test_submitit_local_sweep_gives_a_job_its_gpu(tmp_path):
    """The real submitit launcher: the job runs in its own process and the preset asks for the
    engine's GPU count, so submitit exposes a device instead of hiding all."""
    run_llem(["hydra/launcher=local", "-m", *FAST, "isolate=false", "batch=2", "hydra.sweep.dir=sweep"],
             cwd=tmp_path, check=True)
    rows = _results(tmp_path / "sweep")
    assert len(rows) == 1 and all(r["status"] == "ok" for r in rows.values())
    assert {r["env.cuda_visible_devices"] for r in rows.values()} == {"0"}


def test_optuna_trials_return_the_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_llem(["hydra/sweeper=energy_search", "hydra.sweeper.n_trials=2", "objective.metric=output_tok_per_s",
                     "objective.direction=maximize", "hydra.sweeper.params={batch:'choice(1,2,4)'}", *FAST,
                     "isolate=false", "hydra.sweep.dir=sweep", "-m"], cwd=tmp_path, check=True)
    rows = _results(tmp_path / "sweep")
    assert len(rows) >= 1  # 2 trials; the sampler may repeat a point, which resumes into the same dir
    out = proc.stdout + proc.stderr
    best = float(out.split("Best value: ")[1].split()[0])
    assert best == pytest.approx(max(r["output_tok_per_s"] for r in rows.values()))


def test_one_bad_job_never_stops_a_sweep_and_no_secret_is_written(tmp_path):
    """A value that cannot be stored (seed), one that cannot be composed (batch=abc): each fails alone
    with a failed row, the other jobs run, the summary prints, the exit code says so. A secret that
    reached the config by interpolation or typed in reaches no file and no console line."""
    args = ["-m", *FAST, "isolate=false", "seed=0,100000000000000000000", "batch=2,abc",
            "model.name=${oc.env:HF_TOKEN}", f"model.revision={KEY}", "hydra.sweep.dir=sweep"]
    proc = run_llem(args, cwd=tmp_path, env_extra={"HF_TOKEN": SECRET, "MY_API_KEY": KEY})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 ok, 0 skipped, 3 failed" in out, out
    rows = _results(tmp_path / "sweep")
    assert len(rows) == 4
    seeds = [r for r in rows.values() if r["error_stage"] == "config" and "seed" in str(r["error"])]
    composed = [r for r in rows.values() if r["error_type"] == "ConfigCompositionException"]
    assert len(seeds) == 1 and len(composed) == 2 and "batch=abc" in composed[0]["error"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert {r["cfg.model.name"] for r in ok} == {"<HF_TOKEN>"} and {r["cfg.model.revision"] for r in ok} == {
        "<MY_API_KEY>"}
    agg = subprocess.run([sys.executable, "-m", "llem.aggregate", "sweep", "-o", "agg"], cwd=tmp_path,
                         env=llem_env({"HF_TOKEN": SECRET, "MY_API_KEY": KEY}), capture_output=True, text=True)
    assert agg.returncode == 0, agg.stderr
    runs = pd.read_parquet(tmp_path / "agg" / "runs.parquet")
    assert str(runs["cfg.seed"].dtype) == "float64" and str(runs["cfg.warmup.until_cv"].dtype) == "float64"
    for text in (out, agg.stdout + agg.stderr):
        assert SECRET not in text and KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and KEY.encode() not in data, path


def test_device_cuda_without_a_gpu_refuses_to_measure(tmp_path):
    proc = run_llem([*FAST, "device=cuda", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 1
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "check" and "device=cuda" in r["error"]
    assert "loading" not in proc.stdout + proc.stderr


def test_a_missing_engine_is_said_once_per_sweep_and_each_job_is_a_failed_row(tmp_path):
    if __import__("importlib.util").util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    proc = run_llem(["backend=vllm", "model=llama3", "-m", "batch=1,8,32", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert out.count("backend=vllm needs vLLM, which is not installed") == 2  # the first job's line, the summary
    assert 'pip install ".[vllm]"' in out and "3 failed with: " in out
    rows = _results(tmp_path / "sweep")
    assert len(rows) == 3 and {r["error_type"] for r in rows.values()} == {"EngineUnavailable"}
