"""End to end: the README's command in a subprocess, fail-fast validation, and whole jobs measured
in-process on the tiny model, results read back with pandas."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_in_process, run_llem

pytestmark = pytest.mark.slow
SECRET = "hf_NotARealSecret42xyz"


def _files(job_dir):
    return sorted(p.name for p in job_dir.iterdir() if p.is_file())


def test_default_experiment(tmp_path):
    """The README's first command, from an unrelated working directory: progress through load and
    warm-up, one summary line, the three files, and no noise after the run."""
    t0 = time.monotonic()
    proc = run_llem(["hydra.run.dir=run"], cwd=tmp_path, env_extra={"HF_TOKEN": SECRET}, check=True)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    job = tmp_path / "run"
    assert {"results.parquet", "requests.parquet", "timeseries.parquet", "llem.log"} <= set(_files(job))
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    assert r["status"] == "ok"
    assert r["output_tokens_total"] == r["num_requests"] * r["cfg.output_len"] == r["output_tokens_expected"]
    assert r["energy_method"] == "none" and pd.isna(r["gpu_energy_j"]) and pd.isna(r["j_per_output_token"])
    assert r["energy_null_reason"] == "device=cpu: no GPU is used"
    assert r["output_tok_per_s"] > 0 and r["ttft_ms_p50"] > 0 and r["itl_ms_p50"] > 0
    assert r["steady_state_s"] > 0  # more requests than the batch: a steady state
    req = pd.read_parquet(job / "requests.parquet")
    assert len(req) == r["num_requests"] and (req["output_tokens"] == r["cfg.output_len"]).all()
    ts = pd.read_parquet(job / "timeseries.parquet")
    assert len(ts) == r["timeseries_rows"] and {"load", "measure"} <= set(ts["phase"])
    assert "loading tiny" in out and "warm-up batch 1/1" in out and "tok/s" in out
    assert "leaked semaphore" not in out and "Traceback" not in out
    assert "objective" not in out  # only a sweeper that optimises it needs the objective
    assert elapsed < 60, elapsed
    for path in job.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_readmes_one_liner_prints_the_whole_row(compose_cfg, tmp_path):
    run_in_process(compose_cfg, ["dataset.num_requests=4"], tmp_path / "run")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r'^python -c "(import pandas.*results\.parquet.*)"$', readme, re.MULTILINE).group(1)
    code = code.replace("outputs/<date>/<time>/results.parquet", str(tmp_path / "run" / "results.parquet"))
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    row = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert "..." not in shown
    assert all(name in shown for name in row.index)
    assert row["energy_null_reason"] in shown  # a long value, whole


@pytest.mark.parametrize("bad, says", [  # the rules themselves: tests/test_config.py, in-process
    ("model.dtype=int3", "dtype"),  # Hydra refuses it while composing
    ("input_len=4000", "allowed at most 2048, the model's maximum positions"),  # a check across keys
])
def test_invalid_config_fails_fast_without_success(tmp_path, bad, says):
    proc = run_llem([bad, "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert says in out
    assert "loading" not in out  # failed before any model was loaded
    result = tmp_path / "run" / "results.parquet"
    if result.exists():
        r = pd.read_parquet(result).iloc[0]
        assert r["status"] == "failed" and r["error_stage"] == "config" and says in r["error"]


def test_an_unknown_key_is_refused_by_the_schema_before_anything_loads(compose_cfg):
    """The schema's own check, on the config the job receives (the config stage's exit code and failed row:
    the cases above)."""
    from llem.config import to_config
    from llem.support.errors import ConfigError

    with pytest.raises(ConfigError, match="foo is not a llem key"):
        to_config(compose_cfg(["+foo=1"]))


def test_an_unwritable_run_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_llem([f"hydra.run.dir={blocker}/run"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.run.dir=" in proc.stderr + proc.stdout and "not writable" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_prefill_steady_state_and_settled_warmup(compose_cfg, tmp_path):
    """measure.prefill adds a prefill window (its own phase rows) and the decode split; more requests
    than batch give a steady-state window; warmup.until_cv stops once batch latencies settle."""
    r = run_in_process(compose_cfg, ["dataset.num_requests=6", "output_len=64", "measure.prefill=true",
                                     "warmup.batches=6", "warmup.until_cv=0.9"], tmp_path / "run")
    assert r["status"] == "ok"
    assert 0 < r["prefill_s"] < r["window_s"] and r["decode_s"] == pytest.approx(r["window_s"] - r["prefill_s"])
    assert r["prefill_energy_j"] is None and r["decode_energy_j"] is None  # no GPU: null, never 0
    assert 0 < r["steady_state_s"] <= r["window_s"] and r["steady_state_output_tokens"] > 0
    assert r["steady_state_null_reason"] is None  # there is a steady state; only its energy is null
    assert 3 <= r["warmup_batches_run"] <= 6 and r["warmup_latency_cv"] >= 0
    assert r["padding_overhead_pct"] == 0 and r["weight_precision"] == "float32"
    ts = pd.read_parquet(tmp_path / "run" / "timeseries.parquet")
    assert {"load", "warmup", "measure", "prefill"} <= set(ts["phase"])


def test_a_failure_is_a_failed_row_and_a_rerun_measures_it_again(compose_cfg, tmp_path):
    """An engine that cannot allocate its model: a failed row naming the stage; the same dir then
    resumes (a success is skipped, a failure or another config is measured)."""
    job = tmp_path / "run"
    r = run_in_process(compose_cfg, ["model.architecture.intermediate_size=2000000000000"], job)
    assert r["status"] == "failed" and r["error_stage"] == "load" and "alloc" in r["error"].lower()
    first = run_in_process(compose_cfg, [], job)
    assert first["status"] == "ok" and (job / "outcome.txt").read_text().strip() == "ok"
    again = run_in_process(compose_cfg, [], job)
    assert again["started_at"] == first["started_at"] and (job / "outcome.txt").read_text().strip() == "skipped"
    other = run_in_process(compose_cfg, ["batch=1"], job)
    assert other["cfg.batch"] == 1 and other["started_at"] is not None


def test_console_script_prints_config_and_help(tmp_path):
    exe = shutil.which("llem")
    if exe is None:
        pytest.skip("llem console script not installed")
    proc = subprocess.run([exe, "--cfg", "job", "model=llama3"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "Meta-Llama-3-8B" in proc.stdout
    help_text = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "backend" in help_text and "llama3" in help_text
    assert "base_" not in help_text  # the schema's entries are not options
    assert "slurm" in help_text and "serial" in help_text  # launchers and sweepers are listed


def test_llem_decode_loop_end_to_end(compose_cfg, tmp_path):
    """backend.decode_loop=llem through a whole job, with the prefill pass (a shorter run of the loop)."""
    # 48 decoding steps against the prefill pass's one: the window outlasts it on a loaded machine too
    r = run_in_process(compose_cfg, ["backend.decode_loop=llem", "backend.cache_implementation=static",
                                     "measure.prefill=true", "output_len=48"], tmp_path / "run")
    assert r["status"] == "ok" and r["engine.decode_loop"] == "llem" and not r["engine.cuda_graph"]
    assert r["output_tokens_total"] == r["output_tokens_expected"] == 4 * 48 and 0 < r["prefill_s"] < r["window_s"]
    assert r["itl_ms_p50"] > 0 and r["ttft_ms_p50"] > 0
