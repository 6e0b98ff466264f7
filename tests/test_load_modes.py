"""One meaning of load in every in-process engine: a burst (rate inf) has every request due at the call's
start, a closed loop (rate inf with load.max_concurrency=N) has each next request due as one finishes, a
finite rate has each due at its arrival; TTFT and e2e count from the due time, and the row says which."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from llem.backends.pytorch import PyTorchEngine
from llem.backends.tensorrt import TensorRTEngine
from llem.backends.vllm import VllmEngine
from llem.config import to_config
from llem.config.load import load_mode
from llem.support.errors import ConfigError
from llem.workload.records import Request
from tests.test_tensorrt_engine import fake_trt  # noqa: F401 - a fixture
from tests.test_vllm_engine import fake_vllm  # noqa: F401 - a fixture


@pytest.mark.parametrize("overrides, mode", [([], "burst"), (["load.max_concurrency=4"], "closed"),
                                             (["load.request_rate=5"], "open"),
                                             (["load.request_rate=5", "load.max_concurrency=4"], "open")])
def test_the_load_mode_follows_rate_and_cap(compose_cfg, overrides, mode):
    assert load_mode(to_config(compose_cfg(overrides)).load) == mode


def _vllm(compose_cfg, tmp_path, *overrides):
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "output_len=6",
                                    f"cache_dir={tmp_path}", *overrides]))
    engine = VllmEngine(config, "cuda")
    engine.load()
    return engine


def _closed_loop_holds(out, t0, n):
    """The first ``n`` due at the call's start; every later one due when an earlier one finished, and
    admitted at once (a slot freed is taken in time for the next step, not after a wait)."""
    dues = sorted(r.arrival_s for r in out)
    assert all(abs(d - t0) < 0.05 for d in dues[:n]) and all(d > dues[0] for d in dues[n:])
    first_end = min(r.end_s for r in out)
    assert all(d >= first_end - 0.005 for d in dues[n:])
    assert max(r.start_s - r.arrival_s for r in out) < 0.05


def test_vllm_burst_counts_latency_from_the_calls_start(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    engine = _vllm(compose_cfg, tmp_path, "batch=2")
    t0 = time.perf_counter()
    out = engine.generate([Request(i, [11, 12, 13]) for i in range(6)], 6, lambda n: None)
    assert len({r.arrival_s for r in out}) == 1 and abs(out[0].arrival_s - t0) < 0.05
    waited = [r for r in out if r.start_s - r.arrival_s > 0.005]
    assert len(waited) >= 3  # beyond the batch of 2, a request waits for a slot, and the wait counts


def test_vllm_closed_loop_admits_each_request_as_one_finishes(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    engine = _vllm(compose_cfg, tmp_path, "batch=4", "load.max_concurrency=2")
    t0 = time.perf_counter()
    out = engine.generate([Request(i, [11, 12, 13]) for i in range(8)], 6, lambda n: None)
    _closed_loop_holds(out, t0, 2)
    spans = sorted((r.start_s, r.end_s) for r in out)
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2


def test_tensorrt_closed_loop_admits_each_request_as_one_finishes(compose_cfg, fake_trt):  # noqa: F811
    config = to_config(compose_cfg(["backend=tensorrt", "model=tiny", "batch=4", "load.max_concurrency=2",
                                    "output_len=5"]))
    engine = TensorRTEngine(config, "cuda")
    engine.load()
    t0 = time.perf_counter()
    out = engine.generate([Request(i, [11, 12, 13]) for i in range(8)], 5, lambda n: None)
    _closed_loop_holds(out, t0, 2)


def test_tensorrt_burst_is_due_at_the_calls_start(compose_cfg, fake_trt):  # noqa: F811
    config = to_config(compose_cfg(["backend=tensorrt", "model=tiny", "batch=4", "output_len=5"]))
    engine = TensorRTEngine(config, "cuda")
    engine.load()
    t0 = time.perf_counter()
    out = engine.generate([Request(i, [11, 12, 13]) for i in range(6)], 5, lambda n: None)
    assert len({r.arrival_s for r in out}) == 1 and abs(out[0].arrival_s - t0) < 0.05


def test_pytorch_refuses_a_closed_loop_in_process_with_the_reason(compose_cfg):
    config = to_config(compose_cfg(["load.max_concurrency=2"]))
    with pytest.raises(ConfigError, match="load.max_concurrency=2 .*closed loop.*static batches"):
        PyTorchEngine.validate_config(config)
    PyTorchEngine.validate_config(to_config(compose_cfg(["load.max_concurrency=2", "load.request_rate=5"])))


def test_pytorch_burst_counts_a_later_batchs_wait_in_its_ttft(compose_cfg, tmp_path):
    """Four requests at batch 2, all due at once: the second batch's TTFT includes the first batch's run."""
    from tests.conftest import run_in_process

    row = run_in_process(compose_cfg, ["warmup.batches=0"], tmp_path / "job")
    assert row["status"] == "ok", row["error"]
    assert row["load_mode"] == "burst"
    req = pd.read_parquet(tmp_path / "job" / "requests.parquet").sort_values("batch_index")
    first, second = req[req["batch_index"] == 0], req[req["batch_index"] == 1]
    assert (second["queue_ms"] >= first["e2e_ms"].min() - 1).all()
    assert second["ttft_ms"].min() > first["e2e_ms"].min()
