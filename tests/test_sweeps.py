"""Sweeps: multirun through the real launchers, failures as rows, resume, sweeper objectives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST, run_llem

pytestmark = pytest.mark.slow


def _results(sweep: Path) -> dict:
    return {p.parent.name: pd.read_parquet(p).iloc[0] for p in sweep.glob("*/results.parquet")}


def _size(job_dir_name: str) -> int:
    """The intermediate_size a job of the failure sweep ran with, from its directory name."""
    return int(re.search(r"intermediate_size=(-?\d+)", job_dir_name).group(1))


def _starts(job_dir: Path) -> int:
    """How many times the job began measuring (its log is appended to by every run)."""
    return sum(" backend=" in line and "] - job " in line for line in (job_dir / "llem.log").read_text().splitlines())


def test_basic_sweep_three_jobs(tmp_path):
    proc = run_llem(["-m", *FAST, "batch=1,2,4", "hydra.sweep.dir=sweep"], cwd=tmp_path, check=True)
    rows = _results(tmp_path / "sweep")
    assert len(rows) == 3
    assert sorted(r["cfg.batch"] for r in rows.values()) == [1, 2, 4]
    assert all(r["status"] == "ok" for r in rows.values())
    assert all(f"batch={r['cfg.batch']}" in name.split(",") for name, r in rows.items())  # readable dirs
    assert "3 ok, 0 skipped, 0 failed" in proc.stdout + proc.stderr


def test_submitit_local_sweep_gives_jobs_a_gpu_and_runs_them_one_at_a_time(tmp_path):
    run_llem(["hydra/launcher=local", "-m", *FAST, "batch=1,2", "hydra.sweep.dir=sweep"], cwd=tmp_path, check=True)
    rows = _results(tmp_path / "sweep")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows.values())
    # the preset asks for the engine's GPU count, so submitit exposes a device instead of hiding all
    assert {r["env.cuda_visible_devices"] for r in rows.values()} == {"0"}
    logs = sorted((tmp_path / "sweep").glob("*/llem.log"))
    spans = []
    for log in logs:
        stamps = [line[1:24] for line in log.read_text().splitlines() if line.startswith("[")]
        spans.append((stamps[0], stamps[-1]))
    spans.sort()
    assert spans[0][1] <= spans[1][0]  # the second job started after the first ended


def test_optuna_trials_return_the_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_llem(["hydra/sweeper=energy_search", "hydra.sweeper.n_trials=3", "objective.metric=output_tok_per_s",
                     "objective.direction=maximize", "hydra.sweeper.params={batch:'choice(1,2,4)'}", *FAST,
                     "hydra.sweep.dir=sweep", "-m"], cwd=tmp_path, check=True)
    rows = _results(tmp_path / "sweep")
    assert len(rows) >= 2  # 3 trials; the sampler may repeat a point, which resumes into the same dir
    out = proc.stdout + proc.stderr
    best = float(out.split("Best value: ")[1].split()[0])
    assert best == pytest.approx(max(r["output_tok_per_s"] for r in rows.values()))


def _kill_when_measuring(llem: subprocess.Popen, sweep: Path, size: int, done: list) -> None:
    import psutil

    deadline = time.time() + 120
    while time.time() < deadline and llem.poll() is None:
        logs = [p for p in sweep.glob("*/llem.log") if _size(p.parent.name) == size]
        if logs and "measuring" in logs[0].read_text():
            for child in psutil.Process(llem.pid).children(recursive=True):
                if "spawn_main" in " ".join(child.cmdline()):
                    os.kill(child.pid, signal.SIGKILL)
                    done.append(child.pid)
                    return
        time.sleep(0.02)


def test_failures_become_rows_and_a_rerun_only_reruns_them(tmp_path):
    """One job is killed with SIGKILL mid-measurement, one raises, one asks for impossible memory."""
    sizes = "model.architecture.intermediate_size=344,352,-5,2000000000000"
    args = [sys.executable, "-m", "llem", "-m", "dataset.num_requests=16", "input_len=16", "output_len=128",
            "batch=1", "baseline.settle_s=0", "warmup.batches=0", sizes, "hydra.sweep.dir=sweep"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    sweep = tmp_path / "sweep"
    llem = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: list = []
    watcher = threading.Thread(target=_kill_when_measuring, args=(llem, sweep, 352, killed))
    watcher.start()
    out, _ = llem.communicate(timeout=600)
    watcher.join()
    assert killed, out
    assert llem.returncode == 1
    assert "1 ok, 0 skipped, 3 failed" in out
    rows = _results(sweep)
    by_size = {_size(name): r for name, r in rows.items()}
    assert by_size[344]["status"] == "ok" and by_size[344]["output_tokens_total"] == 16 * 128
    killed_row = by_size[352]
    assert killed_row["status"] == "failed" and "SIGKILL" in killed_row["error"]
    assert killed_row["error_stage"] == "measure"
    assert by_size[-5]["status"] == "failed" and by_size[-5]["error_stage"] == "load"
    assert by_size[2000000000000]["status"] == "failed" and "alloc" in by_size[2000000000000]["error"].lower()

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1
    assert "1 ok, 1 skipped, 2 failed" in rerun.stdout + rerun.stderr
    starts = {_size(p.name): _starts(p) for p in sweep.iterdir() if p.is_dir() and "=" in p.name}
    assert starts == {344: 1, 352: 2, -5: 2, 2000000000000: 2}
    assert {_size(n): r["status"] for n, r in _results(sweep).items()}[352] == "ok"


def test_device_cuda_without_a_gpu_refuses_to_measure(tmp_path):
    proc = run_llem([*FAST, "device=cuda", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 1
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "check" and "device=cuda" in r["error"]
    assert "loaded" not in proc.stdout + proc.stderr
