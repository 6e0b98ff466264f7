"""Sweeps and signals: a measurement process killed mid-window is a failed row and the sweep goes on; SIGTERM
stops the measurement, and a second sweep on a dir in use is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import llem_env
from tests.test_sweeps import _results

pytestmark = pytest.mark.slow


# Tests that signal a running job wait for a condition (a bounded poll), never a fixed time, and give the signal
# a window that lasts minutes (thousands of requests, killed early), so a loaded machine that starves the test's
# watcher for seconds still lands it in the stage the test names.
LONG_WINDOW = "dataset.num_requests=4096"  # 4096 × 256 tokens at batch 1: minutes, far beyond any starvation


def _measuring(sweep: Path, pattern: str, deadline_s: float = 300) -> Path:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        logs = [p for p in sweep.glob(f"*{pattern}*/llem.log") if "measuring" in p.read_text()]
        if logs:
            return logs[0].parent
        time.sleep(0.05)
    raise AssertionError(f"no job matching {pattern} began measuring")


def _measure_child(pid: int, deadline_s: float = 60):
    import psutil

    deadline = time.time() + deadline_s
    while True:  # the job's own measurement process (the one before it may still be ending)
        kids = [c for c in psutil.Process(pid).children(recursive=True)
                if "spawn_main" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE]
        if len(kids) == 1 or time.time() >= deadline:
            break
        time.sleep(0.05)
    assert len(kids) == 1, kids
    return kids[0]


def test_a_killed_measurement_process_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    """One job's measurement process is killed with SIGKILL mid-measurement: a failed row naming the
    signal and the stage, and the sweep goes on (a rerun measuring it again: test_e2e, test_aggregate).
    The killed job's window would last minutes: the kill lands in it however loaded the machine is."""
    args = [sys.executable, "-m", "llem", "-m", f"{LONG_WINDOW},1", "input_len=16", "output_len=256", "batch=1",
            "baseline.settle_s=0", "warmup.batches=0", "reuse_engine=false", "hydra.sweep.dir=sweep"]
    sweep = tmp_path / "sweep"
    llem = subprocess.Popen(args, cwd=tmp_path, env=llem_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    killed: list = []

    def kill_the_long_one():
        _measuring(sweep, "num_requests=4096")
        child = _measure_child(llem.pid)
        os.kill(child.pid, signal.SIGKILL)
        killed.append(child.pid)

    watcher = threading.Thread(target=kill_the_long_one)
    watcher.start()
    out, _ = llem.communicate(timeout=600)
    watcher.join(60)
    assert killed, out
    assert llem.returncode == 1 and "1 ok, 0 skipped, 1 failed" in out, out
    by_count = {int(r["cfg.dataset.num_requests"]): r for r in _results(sweep).values()}
    assert by_count[1]["status"] == "ok" and by_count[1]["output_tokens_total"] == 256
    assert by_count[4096]["status"] == "failed" and "SIGKILL" in by_count[4096]["error"]
    assert by_count[4096]["error_stage"] == "measure" and by_count[4096]["error_type"] == "ProcessDied"


def test_sigterm_stops_the_measurement_and_a_second_sweep_on_the_dir_is_refused(tmp_path):
    args = [sys.executable, "-m", "llem", "-m", LONG_WINDOW, "input_len=16", "output_len=256",
            "batch=1", "baseline.settle_s=0", "warmup.batches=0", "seed=1,2", "hydra.sweep.dir=sweep"]
    sweep = tmp_path / "sweep"
    first = subprocess.Popen(args, cwd=tmp_path, env=llem_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    job = _measuring(sweep, "seed=1")
    child = _measure_child(first.pid)
    second = subprocess.run(args, cwd=tmp_path, env=llem_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "in use by another llem sweep" in second.stderr + second.stdout
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 143, err
    assert err.count("interrupted by SIGTERM during measure") == 1 and "resume" in err and "Traceback" not in err
    assert not child.is_running() or child.status() == "zombie"
    time.sleep(1.0)
    assert not (job / "results.parquet").exists()  # nothing half-measured was written, then or later
    assert not list(sweep.glob("*seed=2*/results.parquet"))  # the sweep stopped
