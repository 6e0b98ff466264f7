"""Energy accounting over several GPUs, replaying the real H100 trace on two to four fake GPUs that
differ (time shift, power scale, counter offset): each GPU's energy and time series come from that
GPU alone, CUDA_VISIBLE_DEVICES picks which physical GPU is charged, and a data-parallel job reads
each physical GPU's counter once per window edge, from the one process that measures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import List

import pytest

from llem.backends import engine_class
from llem.energy.nvml import open_gpus
from llem.energy.window import EnergyMeter, Sampler, trapezoid_j
from tests.fake_nvml import FakeClock, FakeGpu, FakeNVML, default_uuid
from tests.replay import Rig, csv_row_at, make_rig, phase_span, rel_err

READ_COUNTER = "nvmlDeviceGetTotalEnergyConsumption"
SCALES = [1.0, 2.0, 0.5, 1.5]  # integer-exact on the trace's mJ and mW readings


def heavy_counter_steps(trace) -> List[float]:
    return [b["t_s"] for a, b in zip(trace, trace[1:]) if b["phase"] == "heavy"
            and b["energy_counter_mj"] != a["energy_counter_mj"]]


def counter_mj(trace, t: float, gpu: FakeGpu) -> int:
    """GPU ``gpu``'s counter at clock time ``t``, straight from the CSV."""
    return gpu.counter_offset + round(csv_row_at(trace, t - gpu.shift_s)["energy_counter_mj"] * gpu.scale)


def rig_over(nvml: FakeNVML, clock: FakeClock, gpus) -> Rig:
    sampler = Sampler(gpus, 0.02, clock=clock.now)
    return Rig(nvml, clock, gpus, sampler, EnergyMeter(gpus, sampler))


def fake(trace, n: int) -> tuple:
    clock = FakeClock()
    nvml = FakeNVML(trace, clock, n, scales=SCALES[:n])
    return nvml, clock


# ---------------------------------------------------------------------------------------
# two GPUs: per-GPU energy, integrals and time series


@pytest.fixture
def two_gpus(trace):
    """GPU 1 replays the trace 5 counter steps (~0.5 s) late, at 1.25 × the power, from another counter
    origin; the window's edges fall on counter steps of both GPUs, over 4 s of steady heavy load."""
    steps = heavy_counter_steps(trace)
    shift = steps[15] - steps[10]
    t0, t1 = steps[15], steps[50]
    assert min(abs(t1 - shift - s) for s in steps) < 0.002  # GPU 1's end edge is on a step too
    gpus = [FakeGpu(default_uuid(0), counter_offset=10**9),
            FakeGpu(default_uuid(1), shift_s=shift, scale=1.25, counter_offset=7 * 10**12)]
    rig = make_rig(trace, n_gpus=2, gpus=gpus)
    return rig, rig.window("heavy", t0, t1, 0.02), gpus


def test_each_gpu_energy_is_its_own_integer_counter_delta(trace, two_gpus):
    rig, w, gpus = two_gpus
    deltas_mj = [counter_mj(trace, w.t1, g) - counter_mj(trace, w.t0, g) for g in gpus]
    assert deltas_mj[0] != deltas_mj[1]
    for g, delta in zip(gpus, deltas_mj):
        rows = [r for r in rig.sampler.rows if r["gpu_index"] == gpus.index(g)]
        edges = (rows[0]["energy_counter_mj"], rows[-1]["energy_counter_mj"])
        assert all(isinstance(c, int) for c in edges) and edges[1] - edges[0] == delta
    assert w.energy_j_per_gpu == [d / 1000.0 for d in deltas_mj]
    assert w.energy_j == sum(deltas_mj) / 1000.0
    assert w.method == "nvml_counter"


def test_each_gpu_instant_integral_is_within_2pct_of_its_counter(two_gpus):
    rig, w, _ = two_gpus
    assert w.duration_s >= 1.0
    for i in (0, 1):
        mine = [r for r in rig.sampler.rows if r["gpu_index"] == i]
        integral = trapezoid_j([(r["t_s"], r["power_instant_w"]) for r in mine])
        assert abs(rel_err(integral, w.energy_j_per_gpu[i])) < 0.02, i
        other = w.energy_j_per_gpu[1 - i]
        assert abs(rel_err(integral, other)) > 0.1  # the GPUs differ by more than the tolerance


def test_time_series_rows_come_from_their_own_gpu(trace, two_gpus):
    rig, w, gpus = two_gpus
    rows = rig.sampler.between(w.t0, w.t1)
    by_gpu = {i: [r for r in rows if r["gpu_index"] == i] for i in (0, 1)}
    assert len(rows) == len(by_gpu[0]) + len(by_gpu[1]) and len(by_gpu[0]) == len(by_gpu[1]) > 100
    assert [r["t_s"] for r in by_gpu[0]] == [r["t_s"] for r in by_gpu[1]]
    for i, g in enumerate(gpus):
        for r in by_gpu[i]:
            csv = csv_row_at(trace, r["t_s"] - g.shift_s)
            assert r["energy_counter_mj"] == counter_mj(trace, r["t_s"], g)
            assert r["power_instant_w"] == round(csv["power_instant_field_mw"] * g.scale) / 1000.0
            assert (r["temperature_c"], r["sm_clock_mhz"]) == (csv["temperature_c"], csv["sm_clock_mhz"])
    differ = [a["sm_clock_mhz"] != b["sm_clock_mhz"] for a, b in zip(by_gpu[0], by_gpu[1])]
    assert sum(differ) > len(differ) / 2  # a swapped GPU index would not go unseen


# ---------------------------------------------------------------------------------------
# CUDA_VISIBLE_DEVICES decides which physical GPU is charged


@pytest.mark.parametrize("form", ["index", "uuid", "uuid_prefix"])
def test_reordered_visible_devices_charge_the_right_gpu(trace, monkeypatch, form):
    nvml, clock = fake(trace, 2)
    u0, u1 = default_uuid(0), default_uuid(1)
    visible = {"index": "1,0", "uuid": f"{u1},{u0}", "uuid_prefix": f"{u1[4:13]},{u0[:12]}"}[form]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpus, warnings, reason = open_gpus(2, nvml)
    assert reason is None and warnings == []
    assert [(g.index, g.uuid) for g in gpus] == [(1, u1), (0, u0)]  # the job's GPU 0 is NVML GPU 1
    t0, t1 = phase_span(trace, "light")
    w = rig_over(nvml, clock, gpus).window("light", t0, t1)
    delta_j = (csv_row_at(trace, t1)["energy_counter_mj"] - csv_row_at(trace, t0)["energy_counter_mj"]) / 1000.0
    assert w.energy_j_per_gpu == [SCALES[1] * delta_j, SCALES[0] * delta_j]


@pytest.mark.parametrize("visible", ["1", default_uuid(1)])
def test_one_visible_gpu_never_reads_the_other(trace, monkeypatch, visible):
    nvml, clock = fake(trace, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpus, _, _ = open_gpus(1, nvml)
    assert [g.index for g in gpus] == [1]
    t0, t1 = phase_span(trace, "heavy")
    rig = rig_over(nvml, clock, gpus)
    w = rig.window("heavy", t0, t1)
    assert {r["gpu_index"] for r in rig.sampler.rows} == {1}
    assert nvml.calls_by_gpu[1][READ_COUNTER] > 2  # GPU 1 was read…
    assert set(nvml.calls_by_gpu.get(0, {})) <= {"nvmlDeviceGetUUID"}  # …GPU 0 only named, to resolve UUIDs
    assert w.energy_j_per_gpu == [SCALES[1] * (csv_row_at(trace, t1)["energy_counter_mj"]
                                               - csv_row_at(trace, t0)["energy_counter_mj"]) / 1000.0]


# ---------------------------------------------------------------------------------------
# data parallel: one meter in the measuring process, each physical GPU read once per edge


def counter_reads(nvml: FakeNVML) -> List[int]:
    return [nvml.calls_by_gpu.get(i, {}).get(READ_COUNTER, 0) for i in range(len(nvml.gpus))]


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_data_parallel_job_reads_each_gpu_counter_once_per_edge(trace, monkeypatch, num_processes):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    backend = SimpleNamespace(num_processes=num_processes, gpus_per_process=1)
    needed = engine_class("pytorch").gpus_required(backend)  # what the measuring process opens
    assert needed == num_processes
    nvml, clock = fake(trace, 4)
    gpus, warnings, _ = open_gpus(needed, nvml)
    assert [g.index for g in gpus] == list(range(num_processes)) and warnings == []
    rig = rig_over(nvml, clock, gpus)
    t0, t1 = phase_span(trace, "heavy")
    for window in range(2):  # consecutive windows, one sampler: the count holds per window
        before = counter_reads(nvml)
        rows_before = len(rig.sampler.rows)
        w = rig.window("heavy", t0 + 3 * window, t0 + 3 * window + 2.5)
        new_rows = rig.sampler.rows[rows_before:]
        reads = [a - b for a, b in zip(counter_reads(nvml), before)]
        sampled = [sum(1 for r in new_rows if r["gpu_index"] == i) for i in range(4)]
        assert sampled[:num_processes] == [len(new_rows) // num_processes] * num_processes
        # every read is either a time-series row or one of the two window edges
        assert [r - s for r, s in zip(reads, sampled)] == [2] * num_processes + [0] * (4 - num_processes)
        assert len(w.energy_j_per_gpu) == num_processes


def test_the_same_gpu_is_never_opened_twice(trace, monkeypatch):
    nvml, clock = fake(trace, 2)
    needed = engine_class("pytorch").gpus_required(SimpleNamespace(num_processes=3, gpus_per_process=1))
    for visible in ("0,1,0", f"0,1,{default_uuid(0)[:12]}"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        gpus, warnings, _ = open_gpus(needed, nvml)
        assert [g.index for g in gpus] == [0, 1]  # the list stops at the repeat, as CUDA's does
        assert warnings == ["the engine needs 3 GPUs but 2 are visible"]
    t0, t1 = phase_span(trace, "light")
    before = counter_reads(nvml)
    rig = rig_over(nvml, clock, gpus)
    w = rig.window("light", t0, t1)
    delta_j = (csv_row_at(trace, t1)["energy_counter_mj"] - csv_row_at(trace, t0)["energy_counter_mj"]) / 1000.0
    assert w.energy_j_per_gpu == [SCALES[0] * delta_j, SCALES[1] * delta_j]  # GPU 0 is not counted twice
    assert w.energy_j == sum(w.energy_j_per_gpu)
    sampled = [sum(1 for r in rig.sampler.rows if r["gpu_index"] == i) for i in (0, 1)]
    assert [a - b - s for a, b, s in zip(counter_reads(nvml), before, sampled)] == [2, 2]


def test_a_context_opened_while_the_device_idle_floor_is_metered_makes_it_doubtful(trace, monkeypatch):
    """The measurement process imports its engine while the parent meters the floor; had the import opened a
    CUDA context, the floor would be too high: a process on the GPU when the floor ends is a warning (and the
    floor is then not reused by later jobs)."""
    import threading

    from llem.energy import idle
    from llem.energy.nvml import GpuReader

    nvml = FakeNVML(trace, FakeClock(0.0), 1)
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, 0)]
    monkeypatch.setattr(idle, "open_gpus", lambda n: (gpus, [], None))
    cfg = SimpleNamespace(energy=SimpleNamespace(sample_interval_ms=20),
                          baseline=SimpleNamespace(settle_s=0.0, device_idle_s=0.3))
    clean = idle.device_idle_baseline(cfg, 1)
    assert not any("CUDA contexts" in w for w in clean.warnings), clean.warnings
    opener = threading.Timer(0.1, lambda: nvml.gpus[0].pids.append(4242))
    opener.start()
    doubtful = idle.device_idle_baseline(cfg, 1)
    opener.join()
    assert any("CUDA contexts were open on GPUs {0: 1}" in w for w in doubtful.warnings), doubtful.warnings
    again = idle.device_idle_baseline(cfg, 1)  # held from the start: the start's warning says it, once
    assert sum("processes held GPUs" in w or "CUDA contexts" in w for w in again.warnings) == 1
