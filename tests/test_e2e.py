"""End to end: ``python -m llem`` in a subprocess on the tiny model, results read back with pandas."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from tests.conftest import FAST, run_llem

pytestmark = pytest.mark.slow


def _files(job_dir):
    return sorted(p.name for p in job_dir.iterdir() if p.is_file())


def test_default_experiment(tmp_path):
    """The README's first command: the default experiment, from an unrelated working directory."""
    proc = run_llem(["hydra.run.dir=run"], cwd=tmp_path, env_extra={"HF_TOKEN": "hf_NotARealSecret42"}, check=True)
    job = tmp_path / "run"
    assert {"results.parquet", "requests.parquet", "timeseries.parquet"} <= set(_files(job))
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    assert r["status"] == "ok"
    assert r["output_tokens_total"] == r["num_requests"] * r["cfg.output_len"] == r["output_tokens_expected"]
    assert r["energy_method"] == "none" and pd.isna(r["gpu_energy_j"]) and pd.isna(r["j_per_output_token"])
    assert r["energy_null_reason"]
    assert any("GPU energy not measured" in w for w in r["warnings"])
    assert r["output_tok_per_s"] > 0 and r["ttft_ms_p50"] > 0 and r["itl_ms_p50"] > 0
    req = pd.read_parquet(job / "requests.parquet")
    assert len(req) == r["num_requests"] and (req["output_tokens"] == r["cfg.output_len"]).all()
    ts = pd.read_parquet(job / "timeseries.parquet")
    assert len(ts) == r["timeseries_rows"] and {"load", "measure"} <= set(ts["phase"])
    assert "tok/s" in proc.stdout + proc.stderr  # the one-line summary
    for path in job.rglob("*"):
        if path.is_file():
            assert b"hf_NotARealSecret42" not in path.read_bytes(), path


@pytest.mark.parametrize("bad", ["batch=0", "backend=nope", "model.dtype=int3", "+foo=1"])
def test_invalid_config_fails_fast_without_success(tmp_path, bad):
    proc = run_llem([bad, "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert bad.split("=")[0].lstrip("+").split(".")[-1] in out
    assert "loaded" not in out  # failed before any model was loaded
    result = tmp_path / "run" / "results.parquet"
    if result.exists():
        assert pd.read_parquet(result).iloc[0]["status"] == "failed"


def test_failure_becomes_a_failed_row(tmp_path):
    """An engine that cannot allocate its model: a failed row naming the stage, exit code 1."""
    proc = run_llem([*FAST, "model.architecture.intermediate_size=2000000000000", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 1
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "load" and r["error"]


def test_in_process_and_resume(tmp_path):
    run_llem([*FAST, "isolate=false", "hydra.run.dir=run"], cwd=tmp_path, check=True)
    first = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert first["status"] == "ok"
    proc = run_llem([*FAST, "isolate=false", "hydra.run.dir=run"], cwd=tmp_path, check=True)
    assert "skipped" in proc.stdout + proc.stderr
    assert (tmp_path / "run" / "outcome.txt").read_text().strip() == "skipped"
    again = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert again["started_at"] == first["started_at"]
    run_llem([*FAST, "batch=1", "hydra.run.dir=run"], cwd=tmp_path, check=True)  # other config: measured again
    assert pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]["cfg.batch"] == 1


def test_prefill_steady_state_and_settled_warmup(tmp_path):
    """measure.prefill adds a prefill window (its own phase rows) and the decode split; more requests
    than batch give a steady-state window; warmup.until_cv stops once batch latencies settle."""
    args = [*FAST, "dataset.num_requests=6", "measure.prefill=true", "warmup.batches=6", "warmup.until_cv=0.9",
            "hydra.run.dir=run"]
    run_llem(args, cwd=tmp_path, check=True)
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "ok"
    assert 0 < r["prefill_s"] < r["window_s"] and r["decode_s"] == pytest.approx(r["window_s"] - r["prefill_s"])
    assert pd.isna(r["prefill_energy_j"]) and pd.isna(r["decode_energy_j"])  # no GPU: null, never 0
    assert 0 < r["steady_state_s"] <= r["window_s"] and r["steady_state_output_tokens"] > 0
    assert r["steady_state_null_reason"] == "no GPU time series"
    assert 3 <= r["warmup_batches_run"] <= 6 and r["warmup_latency_cv"] >= 0
    assert r["padding_overhead_pct"] == 0 and r["weight_precision"] == "float32"
    ts = pd.read_parquet(tmp_path / "run" / "timeseries.parquet")
    assert {"load", "warmup", "measure", "prefill"} <= set(ts["phase"])


def test_console_script_prints_config(tmp_path):
    exe = shutil.which("llem")
    if exe is None:
        pytest.skip("llem console script not installed")
    proc = subprocess.run([exe, "--cfg", "job", "model=llama3"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "Meta-Llama-3-8B" in proc.stdout
    help_text = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "backend" in help_text and "llama3" in help_text


def test_llem_decode_loop_end_to_end(tmp_path):
    """backend.decode_loop=llem through a whole job, with the prefill pass (a shorter run of the loop)."""
    args = [*FAST, "backend.decode_loop=llem", "backend.cache_implementation=static", "measure.prefill=true",
            "hydra.run.dir=run"]
    run_llem(args, cwd=tmp_path, check=True)
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "ok" and r["engine.decode_loop"] == "llem" and not r["engine.cuda_graph"]
    assert r["output_tokens_total"] == r["output_tokens_expected"] == 4 * 8 and 0 < r["prefill_s"] < r["window_s"]
    assert r["itl_ms_p50"] > 0 and r["ttft_ms_p50"] > 0
