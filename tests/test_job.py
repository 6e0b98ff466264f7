"""Job-level rules without subprocesses: the sweeper objective, locks, interrupts, plugins, job names."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest

from llem.config import to_config
from llem.run.objective import objective
from llem.support.locks import gpu_lock


@pytest.fixture
def config(compose_cfg):
    return lambda *o: to_config(compose_cfg(list(o)))


def test_objective_is_the_metric(config):
    row = {"status": "ok", "j_per_output_token": 0.5, "output_tok_per_s": 900.0, "ttft_ms_p99": 300.0}
    assert objective(row, config()) == 0.5
    assert objective(row, config("objective.metric=output_tok_per_s", "objective.direction=maximize")) == 900.0


def test_failed_or_null_is_the_worst_value_never_zero(config):
    assert objective({"status": "failed"}, config()) == math.inf
    assert objective({"status": "ok", "j_per_output_token": None}, config()) == math.inf
    maximize = config("objective.metric=output_tok_per_s", "objective.direction=maximize")
    assert objective({"status": "ok", "output_tok_per_s": None}, maximize) == -math.inf
    assert objective({"status": "failed"}, None) == math.inf


def test_the_objective_is_not_logged_where_no_sweeper_reads_it(config, caplog):
    caplog.set_level("DEBUG", logger="llem.run.objective")
    objective({"status": "ok", "j_per_output_token": None}, config())
    assert [r.levelname for r in caplog.records if "objective" in r.getMessage()] == ["DEBUG"]


def test_bounds_penalise(config):
    row = {"status": "ok", "j_per_output_token": 0.5, "ttft_ms_p99": 600.0, "output_tok_per_s": 900.0}
    assert objective(row, config("+objective.bounds.ttft_ms_p99='<=500'")) == math.inf
    assert objective(row, config("+objective.bounds.ttft_ms_p99='<=700'")) == 0.5
    assert objective(row, config("+objective.bounds.output_tok_per_s='>=1000'")) == math.inf


def test_bad_bound_names_the_key(config):
    from llem.support.errors import ConfigError

    with pytest.raises(ConfigError, match="objective.bounds.ttft_ms_p99"):
        config("+objective.bounds.ttft_ms_p99='<500'")


def test_gpu_lock_serialises_jobs_on_one_gpu():
    events = []

    def second():
        with gpu_lock(["GPU-test-lock"]):
            events.append(("second", time.monotonic()))

    with gpu_lock(["GPU-test-lock"]):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        events.append(("first-done", time.monotonic()))
    t.join(60)
    assert [e[0] for e in events] == ["first-done", "second"]
    with gpu_lock(["GPU-other"]), gpu_lock(["GPU-test-lock"]):
        pass  # different GPUs do not block each other


# -- locks, interrupts, plugins, names: the driver's side, in-process --------------------------------------


def test_a_job_dir_is_locked_while_its_job_runs(tmp_path):
    from llem.support.locks import job_lock

    with job_lock(tmp_path / "job") as first:
        assert first
        with job_lock(tmp_path / "job") as second:
            assert not second  # a second process would be refused, not run the job again
    with job_lock(tmp_path / "job") as again:
        assert again  # released when the holder ends


def test_a_second_sweep_on_a_locked_dir_is_refused(tmp_path, caplog):
    from omegaconf import OmegaConf

    from llem.run.sweep import SweepSummary
    from llem.support.locks import SWEEP_LOCK, try_lock

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    first = SweepSummary()
    first.on_multirun_start(cfg)
    with pytest.raises(SystemExit) as stop:
        SweepSummary().on_multirun_start(cfg)
    assert stop.value.code == 2 and "in use by another llem sweep" in caplog.text
    assert f"pid {os.getpid()}" in caplog.text
    first.lock.close()
    assert try_lock(tmp_path / "sweep" / SWEEP_LOCK) is not None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_the_measurement_process_first(tmp_path, signum):
    import multiprocessing as mp

    from llem.deploy import process as mpr
    from llem.deploy.held import Held

    ctx = mp.get_context("fork")
    child = ctx.Process(target=time.sleep, args=(60,))
    stage = ctx.RawValue("i", mpr.STAGES.index(mpr.Stage.measure))
    child.start()  # before the handler: a forked child must not inherit it (the real one is spawned)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    held = Held()
    with pytest.raises(mpr.Interrupted) as caught:
        with mpr.interruptible(tmp_path, held):
            held.running = mpr.Running(child, stage)
            threading.Timer(0.2, os.kill, (os.getpid(), signum)).start()
            child.join()  # as the parent does: blocked until the signal arrives
    assert not child.is_alive() and child.exitcode == -signal.SIGTERM
    assert caught.value.stage == mpr.Stage.measure and caught.value.signal_name == signal.Signals(signum).name
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_a_missing_plugin_names_the_extra(monkeypatch):
    import importlib.util

    from llem import __main__ as cli

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert cli._missing_extra(["llem", "hydra/launcher=slurm"]) == (
        "hydra/launcher=slurm needs the 'slurm' extra: pip install \".[slurm]\" from a clone of llem")
    assert '".[search]"' in cli._missing_extra(["llem", "hydra/sweeper=energy_search"])
    assert cli._missing_extra(["llem", "batch=4"]) is None


def test_an_uncomposable_job_gets_a_failed_row_in_the_dir_hydra_would_give_it(compose_cfg, tmp_path):
    from hydra.errors import ConfigCompositionException

    from llem import results
    from llem.config.dirnames import sweep_job_dirname as job_dirname
    from llem.run.sweep import fail_uncomposable

    cfg = compose_cfg([])
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        cfg.hydra = OmegaConf.create({"sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.override_dirname}"},
                                      "job": {"config": {"override_dirname": {
                                          "kv_sep": "=", "item_sep": ",", "exclude_keys": ["isolate"]}}}})
    overrides = ["repeat=1", "batch=abc", "isolate=false"]
    assert job_dirname(cfg, overrides) == "batch=abc,repeat=1"  # sorted, switches excluded, as Hydra names it
    fail_uncomposable(cfg, overrides, ConfigCompositionException("Error merging override batch=abc"))
    row = results.read_result(tmp_path / "batch=abc,repeat=1")
    assert row["status"] == "failed" and row["error_stage"] == "config" and "batch=abc" in row["error"]
    assert (tmp_path / "batch=abc,repeat=1" / "outcome.txt").read_text().strip() == "failed"
