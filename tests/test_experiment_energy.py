"""The whole measurement protocol on CPU with GPUs replayed from the real H100 trace in real time:
the tiny model runs (one process, or two data-parallel gloo processes) while fake NVML GPUs replay
the trace's heavy phase (looped), so every energy column — window, per GPU, phases, steady state, flags —
is computed from counter readings the way it is on hardware."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from llem.config import to_config
from llem.energy.nvml import GpuReader
from llem.measure import experiment
from tests.fake_nvml import FakeClock, FakeNVML
from tests.replay import looped

pytest.importorskip("transformers")


class WallClock(FakeClock):
    """Trace time = seconds since creation × ``speed`` + ``start``: the trace plays while the job runs (faster
    than recorded with ``speed`` > 1: more counter updates in a short window of a job on the tiny model)."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        super().__init__(start)
        self._t0, self._start, self._speed = time.perf_counter(), start, speed

    def now(self) -> float:
        return self._start + (time.perf_counter() - self._t0) * self._speed


def _run(compose_cfg, trace, tmp_path, monkeypatch, overrides, n_gpus=1):
    # the heavy phase on a loop: the job runs its whole protocol on it however slow the machine is
    nvml = FakeNVML(looped(trace, "heavy", 600.0), WallClock(0.0), n_gpus, scales=[1.0, 1.25][:n_gpus])
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, i) for i in range(n_gpus)]
    monkeypatch.setattr(experiment, "metered_gpus", lambda cfg, cls, device: (gpus, [], None))
    config = to_config(compose_cfg(["device=cpu", "dataset.num_requests=24", "batch=4", "input_len=16",
                                    "output_len=64", "measure.prefill=true", "baseline.kind=loaded_idle",
                                    "baseline.loaded_settle_s=0.1", "baseline.loaded_idle_s=0.5", *overrides]))
    row = experiment.Experiment(config, tmp_path, "cpu", experiment.DeviceIdle()).run()
    return row, pd.read_parquet(tmp_path / "timeseries.parquet")


def test_energy_columns_from_replayed_counters(compose_cfg, trace, tmp_path, monkeypatch):
    row, ts = _run(compose_cfg, trace, tmp_path, monkeypatch, [])
    assert row["status"] == "ok", row["error"]
    assert row["energy_method"] == "nvml_counter" and row["gpu_energy_j"] > 0
    assert abs(row["energy_integral_vs_counter_pct"]) < 25  # a short window on a 100 ms counter
    assert row["gpu_energy_adjusted_j"] == pytest.approx(
        row["gpu_energy_j"] - row["loaded_idle_power_w"] * row["window_s"])
    assert row["prefill_energy_j"] >= 0 and row["decode_energy_j"] == pytest.approx(
        row["gpu_energy_j"] - row["prefill_energy_j"])
    assert row["steady_state_energy_j"] is not None and row["steady_state_null_reason"] is None
    assert 0 < row["steady_state_s"] <= row["window_s"]
    assert ("short_window" in row["flags"]) is (row["window_s"] < 10.0)  # measure.min_window_s, metered GPU
    assert row["requests_sizing"] == "set" and row["window_min_s"] == 10.0
    assert any("prefill pass lasted" in w for w in row["warnings"])  # a tiny model's prefill: far under 1 s
    assert {"load", "warmup", "loaded_idle", "measure", "prefill"} <= set(ts["phase"])
    assert set(ts["gpu_index"].dropna()) == {0}


@pytest.mark.slow
def test_data_parallel_reads_each_gpu_once_and_sums(compose_cfg, trace, tmp_path, monkeypatch):
    """Two gloo replicas through accelerate: each GPU read once by the measuring process and summed;
    every request served once, by the replica accelerate's split assigns it to; both replicas at once."""
    import psutil

    from llem.backends._torch_workers import split

    before = {c.pid for c in psutil.Process().children(recursive=True)}  # other tests' servers in this worker
    row, ts = _run(compose_cfg, trace, tmp_path, monkeypatch, ["backend.num_processes=2", "output_len=32"],
                   n_gpus=2)
    assert row["status"] == "ok", row["error"]
    per_gpu = list(row["gpu_energy_j_per_gpu"])
    assert len(per_gpu) == 2 and row["gpu_energy_j"] == pytest.approx(sum(per_gpu))
    assert per_gpu[1] > per_gpu[0]  # GPU 1 replays the trace at 1.25× power
    assert set(ts["gpu_index"].dropna()) == {0, 1}
    req = pd.read_parquet(tmp_path / "requests.parquet").sort_values("request_id")
    assert len(req) == 24 and (req["output_tokens"] == 32).all() and row["engine.num_processes"] == 2
    for rank in (0, 1):
        mine = set(split(list(range(24)), 2, rank))  # request ids are the workload's order
        assert set(req.loc[req["process_index"] == rank, "request_id"]) == mine
    assert row["tokens_requested"] == req["input_tokens"].sum() + 24 * 32  # both replicas' counts, summed
    ends = req["start_offset_s"] + req["e2e_ms"] / 1000
    spans = {rank: (req.loc[req["process_index"] == rank, "start_offset_s"].min(),
                    ends[req["process_index"] == rank].max()) for rank in (0, 1)}
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the replicas ran at the same time
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in before
            and c.status() != "zombie" and "resource_tracker" not in " ".join(c.cmdline())]
    assert not left, left  # the workers were closed with the engine


def test_host_meter_adds_cpu_ram_and_co2_without_counting_the_gpu_twice(compose_cfg, trace, tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    row, ts = _run(compose_cfg, trace, tmp_path, monkeypatch,  # the host's meter, not the window's length
                   ["energy.meters=[nvml,codecarbon]", "energy.country_iso_code=FRA", "dataset.num_requests=8",
                    "output_len=16"])
    assert row["status"] == "ok", row["error"]
    for prefix in ("", "load_", "prefill_"):
        assert row[f"{prefix}cpu_energy_j"] > 0 and row[f"{prefix}ram_energy_j"] > 0
    assert row["energy_total_j"] == pytest.approx(row["gpu_energy_j"] + row["cpu_energy_j"] + row["ram_energy_j"])
    assert row["co2_g"] == pytest.approx(row["energy_total_j"] / 3.6e6 * row["carbon_intensity_g_per_kwh"])
    assert row["cpu_energy_method"].startswith("codecarbon_") and row["host_energy_null_reason"] is None
    assert ("host_energy_estimated" in row["flags"]) is (row["cpu_energy_method"] != "codecarbon_intel_rapl")
    assert not any("codecarbon reported" in w for w in row["warnings"])
    written = pd.read_parquet(tmp_path / "results.parquet").iloc[0]
    assert written["co2_g"] == pytest.approx(row["co2_g"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.parquet", "results.parquet", "timeseries.parquet"]


def test_looped_trace_keeps_counting(trace):
    """The looped replay: time and the counter only move forward across seams, and each lap adds the
    phase's own energy, so a window anywhere on it reads the heavy phase's power."""
    rows = looped(trace, "heavy", 30.0)
    heavy = [r for r in trace if r["phase"] == "heavy"]
    assert rows[-1]["t_s"] >= 30.0 and {r["phase"] for r in rows} == {"heavy"}
    assert all(b["t_s"] > a["t_s"] and b["energy_counter_mj"] >= a["energy_counter_mj"]
               for a, b in zip(rows, rows[1:]))
    lap = len(heavy)
    per_lap_mj = rows[lap]["energy_counter_mj"] - rows[0]["energy_counter_mj"]
    phase_mj = heavy[-1]["energy_counter_mj"] - heavy[0]["energy_counter_mj"]
    assert phase_mj < per_lap_mj < phase_mj * 1.01  # the phase plus one row's worth across the seam
