"""NVML device access on CPU, through a fake pynvml replaying a real H100 trace: which GPUs a job
uses (CUDA_VISIBLE_DEVICES → NVML by UUID), readers, and NVML failures that must degrade."""

from __future__ import annotations

import time

import pytest

from llem.energy.nvml import GpuReader, gpu_counts, load_nvml, open_gpus, visible_indices
from llem.energy.window import Sampler
from tests.fake_nvml import (
    H100_MEMORY_TOTAL_BYTES,
    FakeClock,
    FakeNVML,
    NVMLError_DriverNotLoaded,
    NVMLError_NotSupported,
)
from tests.nvml_trace import TRACE_PATH
from tests.replay import (
    PHASES,
    counter_update_span,
    make_rig,
)

# ---------------------------------------------------------------------------------------
# the trace itself (so a wrong or truncated file fails loudly)


def test_trace_ships_with_the_tests(trace):
    assert TRACE_PATH.parts[-3:] == ("tests", "data", "nvml_trace_h100.csv") and len(trace) == 887
    assert [p for p in PHASES if any(r["phase"] == p for r in trace)] == list(PHASES)
    assert all(a["t_s"] < b["t_s"] for a, b in zip(trace, trace[1:], strict=False))
    assert all(a["energy_counter_mj"] <= b["energy_counter_mj"] for a, b in zip(trace, trace[1:], strict=False))


def test_fake_replays_the_row_at_the_clock(trace):
    rig = make_rig(trace)
    row = trace[len(trace) // 2]
    nxt = trace[len(trace) // 2 + 1]
    rig.clock.set((row["t_s"] + nxt["t_s"]) / 2)  # between two rows: the earlier one
    s = rig.gpus[0].sample()
    assert s["energy_counter_mj"] == row["energy_counter_mj"]
    assert s["power_instant_w"] == row["power_instant_field_mw"] / 1000.0
    assert s["power_average_w"] == row["power_usage_mw"] / 1000.0
    assert (s["temperature_c"], s["sm_clock_mhz"]) == (row["temperature_c"], row["sm_clock_mhz"])
    assert (s["gpu_util_pct"], s["mem_util_pct"]) == (row["gpu_util_pct"], row["mem_util_pct"])
    assert s["memory_used_mib"] == row["memory_used_mb"]
    assert s["clock_event_reasons"] == row["throttle_reasons"]
    rig.clock.set(nxt["t_s"])  # exactly on a row: that row
    assert rig.gpus[0].energy_mj() == nxt["energy_counter_mj"]


def test_reader_facts_and_processes(trace):
    rig = make_rig(trace, pids=[4242, 77])
    facts = rig.gpus[0].facts()
    assert facts["uuid"] == rig.nvml.gpus[0].uuid
    assert facts["power_limit_w"] == 700.0
    assert facts["mig_enabled"] is False
    assert facts["persistence_mode"] is True
    assert facts["memory_total_mib"] == H100_MEMORY_TOTAL_BYTES / 2**20
    assert rig.gpus[0].processes() == [4242, 77]
    assert rig.gpus[0].has_counter and rig.gpus[0].has_instant


# ---------------------------------------------------------------------------------------
# visible_indices / open_gpus / load_nvml (no trace needed)

UUIDS = [
    "GPU-11aa0000-0000-0000-0000-000000000000",
    "GPU-22bb0000-0000-0000-0000-000000000000",
    "GPU-23cc0000-0000-0000-0000-000000000000",
]


@pytest.fixture
def nvml3() -> FakeNVML:
    nvml = FakeNVML(None, FakeClock(), 3, uuids=UUIDS)
    nvml.nvmlInit()
    return nvml


@pytest.mark.parametrize(
    "cuda_visible, expected",
    [
        (None, [0, 1, 2]),
        ("", []),
        ("1,0", [1, 0]),
        (" 2 , 0 ", [2, 0]),
        (UUIDS[2], [2]),
        ("GPU-22", [1]),  # unique UUID prefix
        ("22bb", [1]),  # …without "GPU-"
        ("23cc,11aa", [2, 0]),
        ("23cc,11", [2]),  # "11" is all digits: index 11, out of range
        ("2", [2]),  # all digits: an index, even though "2" also prefixes two UUIDs
        ("GPU-2", []),  # ambiguous prefix names no device: the list stops
        ("0,7,1", [0]),  # out-of-range index stops the list
        ("-1,0", []),
        ("1,zz99,0", [1]),  # no such UUID stops the list
        ("1,,0", [1]),  # an empty entry stops the list
        ("1,1,0", [1]),  # a duplicate stops the list
        ("0,GPU-11aa", [0]),  # the same device twice, by index then UUID
    ],
)
def test_visible_indices(nvml3, cuda_visible, expected):
    indices, warnings = visible_indices(nvml3, cuda_visible)
    assert indices == expected
    assert warnings == []


def test_visible_indices_mig_entry_warns_and_stops(nvml3):
    mig = "MIG-1d2e3f40-0000-0000-0000-000000000000"
    indices, warnings = visible_indices(nvml3, f"1,{mig},0")
    assert indices == [1]
    assert len(warnings) == 1 and "MIG" in warnings[0] and mig in warnings[0]


def test_visible_indices_accepts_bytes_uuids():
    nvml = FakeNVML(None, FakeClock(), 2, uuids=[u.encode() for u in UUIDS[:2]])  # older pynvml returns bytes
    nvml.nvmlInit()
    assert visible_indices(nvml, "22bb,GPU-11aa") == ([1, 0], [])


def test_open_gpus_follows_cuda_visible_devices(nvml3, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-23cc,0")
    gpus, warnings, reason = open_gpus(2, nvml3)
    assert reason is None and warnings == []
    assert [(g.index, g.uuid) for g in gpus] == [(2, UUIDS[2]), (0, UUIDS[0])]
    assert gpu_counts(nvml3) == (2, 3)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, warnings, reason = open_gpus(2, nvml3)
    assert [g.index for g in gpus] == [1]
    assert warnings == ["the engine needs 2 GPUs but 1 are visible"]

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpus, _, _ = open_gpus(2, nvml3)
    assert [g.index for g in gpus] == [0, 1]
    assert gpu_counts(nvml3) == (3, 3)


def test_open_gpus_with_nothing_visible(nvml3, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert open_gpus(1, nvml3) == ([], [], "no GPU is visible (CUDA_VISIBLE_DEVICES)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1d2e3f40-0000-0000-0000-000000000000")
    gpus, warnings, reason = open_gpus(1, nvml3)
    assert gpus == [] and reason == "no GPU is visible (CUDA_VISIBLE_DEVICES)"
    assert len(warnings) == 1 and "MIG" in warnings[0]


def test_reader_without_readings_is_usable(nvml3):
    reader = GpuReader(nvml3, 1)  # every reading NotSupported
    assert (reader.has_counter, reader.has_instant) == (False, False)
    assert reader.energy_mj() is None and reader.power_average_w() is None
    assert all(v is None for k, v in reader.sample().items() if k != "gpu_index")


def test_load_nvml_failure_paths(monkeypatch):
    broken = FakeNVML(None, FakeClock(), 1, init_error=NVMLError_DriverNotLoaded())
    module, reason = load_nvml(broken)
    assert module is None
    assert reason.startswith("NVML unavailable") and "NVMLError_DriverNotLoaded" in reason
    assert open_gpus(1, broken) == ([], [], reason)
    assert gpu_counts(broken) == (0, 0)

    empty = FakeNVML(None, FakeClock(), 0)
    assert load_nvml(empty) == (None, "NVML reports no GPU")

    ok = FakeNVML(None, FakeClock(), 2)
    assert load_nvml(ok) == (ok, None)
    assert ok.initialised



# ---------------------------------------------------------------------------------------
# degraded NVML: odd entries, unreadable GPUs, restarts


def test_non_ascii_digit_entry_stops_the_list(nvml3):
    assert visible_indices(nvml3, "1,²,0") == ([1], [])


def test_unreadable_uuid_matches_nothing_and_does_not_raise(nvml3, monkeypatch):
    real = nvml3.nvmlDeviceGetUUID

    def flaky(handle):
        if real(handle) == UUIDS[1]:
            raise NVMLError_NotSupported()
        return real(handle)

    monkeypatch.setattr(nvml3, "nvmlDeviceGetUUID", flaky)
    assert visible_indices(nvml3, UUIDS[2]) == ([2], [])
    assert visible_indices(nvml3, f"{UUIDS[0]},{UUIDS[1]}") == ([0], [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, _, reason = open_gpus(1, nvml3)
    assert gpus == [] and "could not open" in reason


def test_counter_reset_is_reported_whatever_the_fallback(trace):
    t0, t1 = counter_update_span(trace, "heavy")
    rig = make_rig(trace, counter_reset_at=(t0 + t1) / 2, has_instant=False)
    w = rig.window("heavy", t0, t1)
    assert w.method == "nvml_power_average_integral"
    assert any("went backwards" in m for m in w.warnings)


def test_sampler_restarts_after_stop(trace):
    nvml = FakeNVML(trace, FakeClock(1.0), 1)
    nvml.nvmlInit()
    sampler = Sampler([GpuReader(nvml, 0)], 0.01)
    for _ in range(2):
        before = len(sampler.rows)
        sampler.start()
        deadline = time.monotonic() + 5.0  # a tick, however long a loaded machine takes to give one
        while len(sampler.rows) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        sampler.stop()
        assert len(sampler.rows) > before

