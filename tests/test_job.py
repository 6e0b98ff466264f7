"""Job-level rules without subprocesses: the sweeper objective and the per-GPU lock."""

from __future__ import annotations

import math
import threading
import time

import pytest

from llem.config import to_config
from llem.job import gpu_lock, objective


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


def test_bounds_penalise(config):
    row = {"status": "ok", "j_per_output_token": 0.5, "ttft_ms_p99": 600.0, "output_tok_per_s": 900.0}
    assert objective(row, config("+objective.bounds.ttft_ms_p99='<=500'")) == math.inf
    assert objective(row, config("+objective.bounds.ttft_ms_p99='<=700'")) == 0.5
    assert objective(row, config("+objective.bounds.output_tok_per_s='>=1000'")) == math.inf


def test_bad_bound_names_the_key(config):
    from llem.errors import ConfigError

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
    t.join(5)
    assert [e[0] for e in events] == ["first-done", "second"]
    with gpu_lock(["GPU-other"]), gpu_lock(["GPU-test-lock"]):
        pass  # different GPUs do not block each other
