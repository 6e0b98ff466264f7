"""CPU tests of the NVML energy code, replaying a real H100 trace through a fake pynvml.

Windows are driven by a fake clock and ``Sampler.sample_now`` (no background thread), so every
figure is deterministic. Expected energies are computed here from the CSV itself, with a plain
linear scan that does not share code with the fake's replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pytest

from llem import metrics
from llem.energy.nvml import GpuReader, gpu_counts, load_nvml, open_gpus, visible_indices
from llem.energy.window import COUNTER_UPDATE_S, EnergyMeter, Sampler
from tests.fake_nvml import (
    H100_MEMORY_TOTAL_BYTES,
    TRACE_PATH,
    FakeClock,
    FakeGpu,
    FakeNVML,
    NVMLError_DriverNotLoaded,
    NVMLError_NotSupported,
    TraceMissing,
    load_trace,
    shared_data_disabled,
)

Trace = List[Dict[str, object]]
PHASES = ("idle_before", "heavy", "light", "idle_after")
HW_THERMAL = 0x40
SW_POWER_CAP = 0x4


# ---------------------------------------------------------------------------------------
# the trace, read straight from the CSV


@pytest.fixture(scope="session")
def trace() -> Trace:
    try:
        return load_trace()
    except TraceMissing as exc:
        if shared_data_disabled():
            pytest.skip(f"LLEM_NO_SHARED_DATA is set: {exc}")
        pytest.fail(str(exc), pytrace=False)


def csv_row_at(trace: Trace, t: float) -> Dict[str, object]:
    """The last row with t_s <= t (a linear scan, independent of the fake's bisect)."""
    before = [r for r in trace if r["t_s"] <= t]
    assert before, f"t={t} is before the trace starts"
    return before[-1]


def csv_counter_j(trace: Trace, t0: float, t1: float) -> float:
    c0 = csv_row_at(trace, t0)["energy_counter_mj"]
    c1 = csv_row_at(trace, t1)["energy_counter_mj"]
    return (c1 - c0) / 1000.0


def phase_span(trace: Trace, phase: str) -> Tuple[float, float]:
    ts = [r["t_s"] for r in trace if r["phase"] == phase]
    return ts[0], ts[-1]


def long_phases(trace: Trace) -> List[str]:
    return [p for p in PHASES if phase_span(trace, p)[1] - phase_span(trace, p)[0] >= 4.0]


def counter_update_span(trace: Trace, phase: str) -> Tuple[float, float]:
    """First and last instants in ``phase`` at which the energy counter stepped.

    The counter only advances about every 100 ms, so a window whose edges fall between two
    updates misses up to ~0.1 s of power at each edge; between update instants the counter is exact.
    """
    steps = [
        b["t_s"]
        for a, b in zip(trace, trace[1:], strict=False)
        if b["phase"] == phase and b["energy_counter_mj"] != a["energy_counter_mj"]
    ]
    return steps[0], steps[-1]


def grid(t0: float, t1: float, step: float) -> List[float]:
    """The sample times of a window: t0, t0 + step, …, and t1."""
    ts = [t0]
    k = 1
    while t0 + k * step < t1 - 1e-9:
        ts.append(t0 + k * step)
        k += 1
    return ts + [t1]


def csv_trapezoid_j(trace: Trace, t0: float, t1: float, step: float, column: str) -> float:
    """∫ column (mW) dt in J, sampled on the same grid as a window."""
    ts = grid(t0, t1, step)
    watts = [csv_row_at(trace, t)[column] / 1000.0 for t in ts]
    return sum((b - a) * (wa + wb) / 2 for a, b, wa, wb in zip(ts, ts[1:], watts, watts[1:], strict=False))


# ---------------------------------------------------------------------------------------
# a meter over fake GPUs


@dataclass
class Rig:
    nvml: FakeNVML
    clock: FakeClock
    gpus: List[GpuReader]
    sampler: Sampler
    meter: EnergyMeter

    def window(self, phase: str, t0: float, t1: float, step: float = 0.02):
        """Open a window at t0, sample every ``step`` seconds of fake time, close it at t1."""
        ts = grid(t0, t1, step)
        self.clock.set(ts[0])
        mark = self.meter.start(phase)
        for t in ts[1:-1]:
            self.clock.set(t)
            self.sampler.sample_now()
        self.clock.set(ts[-1])
        return self.meter.stop(mark)


def make_rig(trace, n_gpus: int = 1, interval_s: float = 0.02, **fake_options) -> Rig:
    clock = FakeClock(0.0)
    nvml = FakeNVML(trace, clock, n_gpus, **fake_options)
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, i) for i in range(n_gpus)]
    sampler = Sampler(gpus, interval_s, clock=clock.now)
    return Rig(nvml, clock, gpus, sampler, EnergyMeter(gpus, sampler))


def rel_err(measured: float, reference: float) -> float:
    return measured / reference - 1.0


# ---------------------------------------------------------------------------------------
# the trace itself (so a wrong or truncated file fails loudly)


def test_trace_is_read_from_shared_data(trace):
    assert TRACE_PATH.parts[-3:] == ("shared", "data", "nvml_trace_h100.csv")
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
    assert s["memory_used_mb"] == row["memory_used_mb"]
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
    assert facts["memory_total_mb"] == H100_MEMORY_TOTAL_BYTES / 2**20
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
# counter-delta windows over the trace's phases


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("step", [0.02, 0.1])
def test_window_energy_is_the_exact_counter_delta(trace, phase, step):
    t0, t1 = phase_span(trace, phase)
    w = make_rig(trace).window(phase, t0, t1, step)
    expected = csv_counter_j(trace, t0, t1)
    assert expected > 0
    assert w.method == "nvml_counter"
    assert w.energy_j == expected  # integer mJ / 1000: exact, not approx
    assert w.energy_j_per_gpu == [expected]
    assert w.avg_power_w == pytest.approx(expected / (t1 - t0))
    assert w.power_per_gpu_w == [pytest.approx(expected / (t1 - t0))]
    # the instant-power cross-check is the trapezoid over the samples, whatever the method
    assert w.integrated_j == pytest.approx(csv_trapezoid_j(trace, t0, t1, step, "power_instant_field_mw"), rel=1e-12)
    rows = [r for r in trace if t0 <= r["t_s"] <= t1]
    assert w.peak_power_w == max(r["power_instant_field_mw"] for r in rows) / 1000.0
    assert w.peak_memory_used_mb == max(r["memory_used_mb"] for r in rows)


def test_consecutive_windows_use_only_their_own_samples(trace):
    rig = make_rig(trace)  # one sampler for both windows, as in a real run
    (h0, h1), (i0, i1) = phase_span(trace, "heavy"), phase_span(trace, "idle_after")
    heavy = rig.window("heavy", h0, h1, 0.1)
    idle = rig.window("idle_after", i0, i1, 0.1)
    assert [r["phase"] for r in rig.sampler.rows] == ["heavy"] * len(grid(h0, h1, 0.1)) + ["idle_after"] * len(
        grid(i0, i1, 0.1)
    )
    assert [r["t_s"] for r in rig.sampler.rows if r["phase"] == "heavy"] == grid(h0, h1, 0.1)
    idle_rows = [r for r in trace if i0 <= r["t_s"] <= i1]
    assert idle.peak_power_w == max(r["power_instant_field_mw"] for r in idle_rows) / 1000.0 < heavy.peak_power_w
    assert idle.integrated_j == pytest.approx(csv_trapezoid_j(trace, i0, i1, 0.1, "power_instant_field_mw"))
    assert idle.energy_j == csv_counter_j(trace, i0, i1)


@pytest.mark.parametrize("step", [0.02, 0.1])
def test_instant_integral_agrees_with_counter_within_2pct(trace, step):
    """On every phase of >= 4 s, between counter-update instants, ∫ instant power ≈ counter delta."""
    phases = long_phases(trace)
    assert "heavy" in phases and "light" in phases and "idle_after" in phases
    for phase in phases:
        t0, t1 = counter_update_span(trace, phase)
        w = make_rig(trace).window(phase, t0, t1, step)
        assert w.energy_j == csv_counter_j(trace, t0, t1)
        assert abs(rel_err(w.integrated_j, w.energy_j)) < 0.02, phase


def test_instant_integral_over_whole_phases_is_within_counter_granularity(trace):
    """Over unaligned phase edges the counter lags by up to one update (~0.1 s) at each edge."""
    for phase in long_phases(trace):
        t0, t1 = phase_span(trace, phase)
        w = make_rig(trace).window(phase, t0, t1, 0.02)
        edge_j = (
            COUNTER_UPDATE_S
            * (csv_row_at(trace, t0)["power_instant_field_mw"] + csv_row_at(trace, t1)["power_instant_field_mw"])
            / 1000.0
        )
        assert abs(w.integrated_j - w.energy_j) <= 0.02 * w.energy_j + edge_j, phase
    for phase in ("heavy", "light"):  # where the edges are small next to the phase's energy: 2 % holds as is
        t0, t1 = phase_span(trace, phase)
        w = make_rig(trace).window(phase, t0, t1, 0.02)
        assert abs(rel_err(w.integrated_j, w.energy_j)) < 0.02, phase


def test_averaged_power_lags_load_changes(trace):
    """GetPowerUsage is a ~1 s average on Hopper: integrating it under-counts a rise, over-counts a fall."""
    errors = {}
    for phase in ("heavy", "light"):
        t0, t1 = phase_span(trace, phase)
        counter = csv_counter_j(trace, t0, t1)
        instant = make_rig(trace, has_counter=False).window(phase, t0, t1, 0.02)
        average = make_rig(trace, has_counter=False, has_instant=False).window(phase, t0, t1, 0.02)
        assert instant.method == "nvml_power_instant_integral"
        assert average.method == "nvml_power_average_integral"
        assert average.energy_j == pytest.approx(csv_trapezoid_j(trace, t0, t1, 0.02, "power_usage_mw"), rel=1e-12)
        errors[phase] = (rel_err(instant.energy_j, counter), rel_err(average.energy_j, counter))
    (inst_heavy, avg_heavy), (inst_light, avg_light) = errors["heavy"], errors["light"]
    assert avg_heavy < -0.03  # idle → heavy: the average is still catching up
    assert avg_light > 0.03  # heavy → light: the average still remembers the heavy load
    assert abs(avg_heavy) > abs(inst_heavy) + 0.03
    assert abs(avg_light) > abs(inst_light) + 0.03


def test_counter_near_2_pow_63_keeps_the_delta_exact(trace):
    t0, t1 = phase_span(trace, "heavy")
    offset = 2**63 - csv_row_at(trace, (t0 + t1) / 2)["energy_counter_mj"]  # the counter passes 2**63 mid-window
    rig = make_rig(trace, counter_offset=offset)
    w = rig.window("heavy", t0, t1)
    c0, c1 = (csv_row_at(trace, t)["energy_counter_mj"] + offset for t in (t0, t1))
    assert c0 < 2**63 <= c1
    assert rig.gpus[0].energy_mj() == c1  # the reader hands back the raw 64-bit value
    assert w.energy_j == csv_counter_j(trace, t0, t1) == (c1 - c0) / 1000.0
    assert (float(c1) - float(c0)) / 1000.0 != w.energy_j  # what float arithmetic would have given
    assert w.method == "nvml_counter"


def test_counter_going_backwards_falls_back_to_instant_power(trace):
    t0, t1 = counter_update_span(trace, "heavy")
    rig = make_rig(trace, counter_reset_at=(t0 + t1) / 2)
    w = rig.window("heavy", t0, t1)
    assert w.method == "nvml_power_instant_integral"
    assert w.energy_j == w.integrated_j == pytest.approx(csv_trapezoid_j(trace, t0, t1, 0.02, "power_instant_field_mw"))
    assert abs(rel_err(w.energy_j, csv_counter_j(trace, t0, t1))) < 0.02
    assert any("went backwards" in m for m in w.warnings)


def test_no_counter_uses_the_instant_integral(trace):
    t0, t1 = phase_span(trace, "light")
    rig = make_rig(trace, has_counter=False)
    assert not rig.gpus[0].has_counter
    w = rig.window("light", t0, t1)
    assert w.method == "nvml_power_instant_integral"
    assert w.energy_j == pytest.approx(csv_trapezoid_j(trace, t0, t1, 0.02, "power_instant_field_mw"), rel=1e-12)
    assert w.integrated_j == w.energy_j
    assert w.warnings == []


def test_no_counter_no_instant_uses_the_average_with_a_warning(trace):
    t0, t1 = phase_span(trace, "idle_before")
    w = make_rig(trace, has_counter=False, has_instant=False).window("idle_before", t0, t1)
    assert w.method == "nvml_power_average_integral"
    assert w.energy_j == pytest.approx(csv_trapezoid_j(trace, t0, t1, 0.02, "power_usage_mw"), rel=1e-12)
    assert w.integrated_j is None  # no instant power to cross-check with
    assert any("averaged power" in m for m in w.warnings)


def test_no_reading_at_all_gives_no_energy(trace):
    t0, t1 = phase_span(trace, "heavy")
    w = make_rig(trace, has_counter=False, has_instant=False, has_average=False).window("heavy", t0, t1)
    assert w.energy_j is None and w.energy_j_per_gpu == [None]
    assert w.method == "none" and w.avg_power_w is None and w.peak_power_w is None
    assert w.power_per_gpu_w == [None]
    assert any(m.startswith("GPU energy not measured") for m in w.warnings)


def test_two_gpus_per_gpu_energy_and_sum(trace):
    shift, scale = 1.5, 2.0  # GPU 1 replays the trace 1.5 s late, at twice the power
    t0, t1 = phase_span(trace, "heavy")
    rig = make_rig(trace, n_gpus=2, shifts=[0.0, shift], scales=[1.0, scale])
    w = rig.window("heavy", t0, t1)
    e0 = csv_counter_j(trace, t0, t1)
    e1 = scale * csv_counter_j(trace, t0 - shift, t1 - shift)
    assert e0 != e1
    assert w.energy_j_per_gpu == [e0, e1]
    assert w.energy_j == e0 + e1
    assert w.method == "nvml_counter"
    assert w.power_per_gpu_w == [pytest.approx(e0 / (t1 - t0)), pytest.approx(e1 / (t1 - t0))]
    assert w.avg_power_w == pytest.approx((e0 + e1) / (t1 - t0))
    instant = [csv_trapezoid_j(trace, t0 - s, t1 - s, 0.02, "power_instant_field_mw") for s in (0.0, shift)]
    assert w.integrated_j == pytest.approx(instant[0] + scale * instant[1], rel=1e-9)
    peak = max(
        (
            csv_row_at(trace, t)["power_instant_field_mw"]
            + scale * csv_row_at(trace, t - shift)["power_instant_field_mw"]
        )
        / 1000.0
        for t in grid(t0, t1, 0.02)
    )
    assert w.peak_power_w == pytest.approx(peak)


def test_one_gpu_without_counter_mixes_methods(trace):
    t0, t1 = phase_span(trace, "light")
    gpus = [FakeGpu(uuid="GPU-aa"), FakeGpu(uuid="GPU-bb", has_counter=False)]
    rig = make_rig(trace, n_gpus=2, gpus=gpus)
    w = rig.window("light", t0, t1)
    assert w.method == "nvml_counter+nvml_power_instant_integral"
    assert w.energy_j_per_gpu[0] == csv_counter_j(trace, t0, t1)
    assert w.energy_j_per_gpu[1] == pytest.approx(csv_trapezoid_j(trace, t0, t1, 0.02, "power_instant_field_mw"))


def test_no_gpus_gives_none_not_zero():
    clock = FakeClock(10.0)
    sampler = Sampler([], 0.02, clock=clock.now)
    meter = EnergyMeter([], sampler, null_reason="NVML unavailable (test)")
    mark = meter.start("heavy")
    clock.advance(2.0)
    w = meter.stop(mark)
    assert w.energy_j is None and w.method == "none" and w.energy_j_per_gpu == []
    assert w.warnings == ["GPU energy not measured: NVML unavailable (test)"]
    assert [r["gpu_index"] for r in sampler.rows] == [None, None]
    assert (
        metrics.energy_summary(w.energy_j, w.duration_s, 100, 1, "device_idle", {"device_idle": 70.0})[
            "gpu_energy_adjusted_j"
        ]
        is None
    )
    default = EnergyMeter([], Sampler([], 0.02, clock=clock.now)).stop(mark)
    assert default.warnings == ["GPU energy not measured: no GPU is metered"]


def test_short_window_warns(trace):
    t0 = phase_span(trace, "heavy")[0] + 1.0
    short = make_rig(trace).window("warmup", t0, t0 + 0.5)
    assert short.energy_j == csv_counter_j(trace, t0, t0 + 0.5)
    assert any("warmup window lasted 0.50 s" in m and "coarse" in m for m in short.warnings)
    long = make_rig(trace).window("warmup", t0, t0 + 1.5)
    assert not any("coarse" in m for m in long.warnings)


def test_hw_thermal_throttle_warns_but_sw_power_cap_does_not(trace):
    t0, t1 = phase_span(trace, "heavy")
    assert any(csv_row_at(trace, t)["throttle_reasons"] & SW_POWER_CAP for t in grid(t0, t1, 0.02))  # the trace has it
    capped = make_rig(trace).window("heavy", t0, t1)
    assert capped.throttle == []
    assert not any("limited by" in m for m in capped.warnings)

    injected_cap = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 2.0, SW_POWER_CAP)]).window("heavy", t0, t1)
    assert injected_cap.throttle == []

    hot = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 1.2, HW_THERMAL)]).window("heavy", t0, t1)
    assert hot.throttle == ["hw_thermal"]
    assert any(m.startswith("heavy:") and "hw_thermal" in m for m in hot.warnings)
    assert hot.energy_j == capped.energy_j  # a warning, not a different energy


# ---------------------------------------------------------------------------------------
# metrics.energy_summary on windows measured from the trace


@pytest.fixture(scope="module")
def measured(trace) -> Dict[str, object]:
    out = {}
    for phase in PHASES:
        t0, t1 = phase_span(trace, phase)
        out[phase] = make_rig(trace).window(phase, t0, t1)
    return out


@pytest.mark.parametrize("kind, idle_phase", [("device_idle", "idle_before"), ("loaded_idle", "idle_after")])
def test_energy_summary_subtracts_the_baseline(measured, kind, idle_phase):
    heavy = measured["heavy"]
    power = measured[idle_phase].avg_power_w
    idle = {"device_idle": measured["idle_before"].avg_power_w, "loaded_idle": measured["idle_after"].avg_power_w}
    tokens, requests = 1234, 8
    s = metrics.energy_summary(heavy.energy_j, heavy.duration_s, tokens, requests, kind, idle)
    adjusted = heavy.energy_j - power * heavy.duration_s
    assert 0 < adjusted < heavy.energy_j
    assert s["gpu_energy_j"] == heavy.energy_j
    assert s["baseline_kind"] == kind and s["baseline_power_w"] == power
    assert s["baseline_energy_j"] == pytest.approx(power * heavy.duration_s)
    assert s["gpu_energy_adjusted_j"] == pytest.approx(adjusted)
    assert s["j_per_output_token"] == pytest.approx(adjusted / tokens)
    assert s["j_per_output_token_raw"] == pytest.approx(heavy.energy_j / tokens)
    assert s["j_per_request"] == pytest.approx(adjusted / requests)
    assert s["output_tokens_per_j"] == pytest.approx(tokens / adjusted)
    assert s["warnings"] == []


def test_energy_summary_kind_none_keeps_raw(measured):
    light = measured["light"]
    s = metrics.energy_summary(light.energy_j, light.duration_s, 500, 5, "none", {"device_idle": 70.0})
    assert s["gpu_energy_adjusted_j"] == light.energy_j
    assert s["baseline_power_w"] is None and s["baseline_energy_j"] is None
    assert s["j_per_output_token"] == s["j_per_output_token_raw"] == pytest.approx(light.energy_j / 500)
    assert s["j_per_request"] == pytest.approx(light.energy_j / 5)


def test_energy_summary_missing_baseline(measured):
    heavy = measured["heavy"]
    s = metrics.energy_summary(
        heavy.energy_j, heavy.duration_s, 100, 2, "loaded_idle", {"device_idle": 70.0, "loaded_idle": None}
    )
    assert s["gpu_energy_adjusted_j"] is None
    assert s["j_per_output_token"] is None and s["j_per_request"] is None and s["output_tokens_per_j"] is None
    assert s["j_per_output_token_raw"] == pytest.approx(heavy.energy_j / 100)  # the raw figure survives
    assert s["warnings"] == ["baseline loaded_idle was not measured: adjusted energy is null"]


def test_energy_summary_without_energy_is_all_none():
    s = metrics.energy_summary(None, 6.0, 100, 2, "device_idle", {"device_idle": 70.0})
    figures = {k: v for k, v in s.items() if k not in ("baseline_kind", "warnings")}
    assert figures and all(v is None for v in figures.values()), figures


def test_energy_summary_keeps_a_negative_adjusted_energy(measured):
    quiet = measured["idle_before"]  # ~71 W, against the ~122 W of the loaded-idle phase
    loaded = measured["idle_after"].avg_power_w
    s = metrics.energy_summary(quiet.energy_j, quiet.duration_s, 10, 1, "loaded_idle", {"loaded_idle": loaded})
    expected = quiet.energy_j - loaded * quiet.duration_s
    assert expected < 0
    assert s["gpu_energy_adjusted_j"] == pytest.approx(expected)  # not clipped to 0
    assert s["j_per_output_token"] == pytest.approx(expected / 10)
    assert s["output_tokens_per_j"] is None
    assert len(s["warnings"]) == 1 and "not positive" in s["warnings"][0]


# ---------------------------------------------------------------------------------------
# the background sampler, in real time

ROW_KEYS = {
    "t_s",
    "phase",
    "gpu_index",
    "energy_counter_mj",
    "power_instant_w",
    "power_average_w",
    "temperature_c",
    "sm_clock_mhz",
    "gpu_util_pct",
    "mem_util_pct",
    "memory_used_mb",
    "clock_event_reasons",
    "cpu_util_pct",
    "rss_mb",
}


def test_background_sampler_runs_and_stops(trace):
    clock = FakeClock(phase_span(trace, "heavy")[0] + 2.0)  # the fake GPUs replay one instant of the heavy phase
    nvml = FakeNVML(trace, clock, 2)
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, i) for i in range(2)]
    sampler = Sampler(gpus, 0.01)  # real perf_counter time
    sampler.phase = "bg"
    started = time.perf_counter()
    sampler.start()
    time.sleep(0.15)
    sampler.stop()
    stopped = time.perf_counter()
    assert not sampler._thread.is_alive()
    rows = list(sampler.rows)
    assert len(rows) >= 4 and len(rows) % 2 == 0  # one row per GPU per tick
    row = csv_row_at(trace, clock.now())
    for r in rows:
        assert set(r) == ROW_KEYS
        assert started <= r["t_s"] <= stopped and r["phase"] == "bg"
        assert r["energy_counter_mj"] == row["energy_counter_mj"]
        assert r["power_instant_w"] == row["power_instant_field_mw"] / 1000.0
    assert {r["gpu_index"] for r in rows} == {0, 1}
    time.sleep(0.05)
    assert len(sampler.rows) == len(rows)  # nothing after stop()


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
        time.sleep(0.06)
        sampler.stop()
        assert len(sampler.rows) > before
