"""Energy windows on CPU, replaying a real H100 NVML trace: counter deltas, power integration
fallbacks, baselines, and the sampler thread (doubt flags: test_flags.py)."""

from __future__ import annotations

import time
from typing import Dict

import pytest

from llem.energy.nvml import GpuReader
from llem.energy.window import COUNTER_UPDATE_S, EnergyMeter, Sampler
from llem.measure import metrics
from llem.results.schema import columns_of
from llem.results.tables import TimeseriesRow
from llem.serving.scrape import COLUMNS as SCRAPED
from tests.fake_nvml import (
    FakeClock,
    FakeGpu,
    FakeNVML,
)
from tests.replay import (
    HW_THERMAL,
    PHASES,
    SW_POWER_CAP,
    counter_update_span,
    csv_counter_j,
    csv_row_at,
    csv_trapezoid_j,
    grid,
    long_phases,
    make_rig,
    phase_span,
    rel_err,
)

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
    assert w.peak_memory_used_mib == max(r["memory_used_mb"] for r in rows)


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
    assert w.null_reason == "NVML unavailable (test)"
    summary, _ = metrics.energy_summary(w.energy_j, w.duration_s, 100, 1, "device_idle", {"device_idle": 70.0})
    assert summary.gpu_energy_adjusted_j is None
    default = EnergyMeter([], Sampler([], 0.02, clock=clock.now)).stop(mark)
    assert default.warnings == ["GPU energy not measured: no GPU is metered"]


def test_short_window_energy_is_the_counter_delta(trace):
    t0 = phase_span(trace, "heavy")[0] + 1.0
    short = make_rig(trace).window("warmup", t0, t0 + 0.5)
    assert short.energy_j == csv_counter_j(trace, t0, t0 + 0.5)


def test_window_lists_hw_thermal_throttle_but_not_sw_power_cap(trace):
    t0, t1 = phase_span(trace, "heavy")
    assert any(csv_row_at(trace, t)["throttle_reasons"] & SW_POWER_CAP for t in grid(t0, t1, 0.02))  # the trace has it
    capped = make_rig(trace).window("heavy", t0, t1)
    assert capped.throttle == []

    injected_cap = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 2.0, SW_POWER_CAP)]).window("heavy", t0, t1)
    assert injected_cap.throttle == []

    hot = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 1.2, HW_THERMAL)]).window("heavy", t0, t1)
    assert hot.throttle == ["hw_thermal"]
    assert hot.energy_j == capped.energy_j  # a doubt, not a different energy


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
    s, warns = metrics.energy_summary(heavy.energy_j, heavy.duration_s, tokens, requests, kind, idle)
    adjusted = heavy.energy_j - power * heavy.duration_s
    assert 0 < adjusted < heavy.energy_j
    assert s.baseline_kind == kind and s.baseline_power_w == power
    assert s.baseline_energy_j == pytest.approx(power * heavy.duration_s)
    assert s.gpu_energy_adjusted_j == pytest.approx(adjusted)
    assert s.j_per_output_token == pytest.approx(adjusted / tokens)
    assert s.j_per_output_token_raw == pytest.approx(heavy.energy_j / tokens)
    assert s.j_per_request == pytest.approx(adjusted / requests)
    assert s.output_tokens_per_j == pytest.approx(tokens / adjusted)
    assert warns == []


def test_energy_summary_kind_none_keeps_raw(measured):
    light = measured["light"]
    s, warns = metrics.energy_summary(light.energy_j, light.duration_s, 500, 5, "none", {"device_idle": 70.0})
    assert s.gpu_energy_adjusted_j == light.energy_j
    assert s.baseline_power_w is None and s.baseline_energy_j is None
    assert s.j_per_output_token == s.j_per_output_token_raw == pytest.approx(light.energy_j / 500)
    assert s.j_per_request == pytest.approx(light.energy_j / 5)


def test_energy_summary_missing_baseline(measured):
    heavy = measured["heavy"]
    s, warns = metrics.energy_summary(
        heavy.energy_j, heavy.duration_s, 100, 2, "loaded_idle", {"device_idle": 70.0, "loaded_idle": None}
    )
    assert s.gpu_energy_adjusted_j is None
    assert s.j_per_output_token is None and s.j_per_request is None and s.output_tokens_per_j is None
    assert s.j_per_output_token_raw == pytest.approx(heavy.energy_j / 100)  # the raw figure survives
    assert warns == ["baseline loaded_idle was not measured: adjusted energy is null"]


def test_energy_summary_without_energy_is_all_none():
    s, warns = metrics.energy_summary(None, 6.0, 100, 2, "device_idle", {"device_idle": 70.0})
    figures = {k: v for k, v in vars(s).items() if k != "baseline_kind"}
    assert figures and all(v is None for v in figures.values()), figures


def test_energy_summary_keeps_a_negative_adjusted_energy(measured):
    quiet = measured["idle_before"]  # ~71 W, against the ~122 W of the loaded-idle phase
    loaded = measured["idle_after"].avg_power_w
    s, warns = metrics.energy_summary(quiet.energy_j, quiet.duration_s, 10, 1, "loaded_idle", {"loaded_idle": loaded})
    expected = quiet.energy_j - loaded * quiet.duration_s
    assert expected < 0
    assert s.gpu_energy_adjusted_j == pytest.approx(expected)  # not clipped to 0
    assert s.j_per_output_token == pytest.approx(expected / 10)
    assert s.output_tokens_per_j is None
    assert len(warns) == 1 and "not positive" in warns[0]


# ---------------------------------------------------------------------------------------
# the background sampler, in real time

# the sampler's rows are the declared columns but those of a server's scrapes, which are rows of their own
ROW_KEYS = {c.name for c in columns_of(TimeseriesRow)} - set(SCRAPED.values())


def test_background_sampler_runs_and_stops(trace):
    clock = FakeClock(phase_span(trace, "heavy")[0] + 2.0)  # the fake GPUs replay one instant of the heavy phase
    nvml = FakeNVML(trace, clock, 2)
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, i) for i in range(2)]
    sampler = Sampler(gpus, 0.01)  # real perf_counter time
    sampler.phase = "bg"
    started = time.perf_counter()
    sampler.start()
    deadline = started + 5.0  # at least two ticks (a loaded machine may starve the thread for a while)
    while len(sampler.rows) < 4 and time.perf_counter() < deadline:
        time.sleep(0.01)
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




def test_a_counted_process_tree_adds_its_memory_to_the_samples():
    import subprocess
    import sys

    import psutil

    # a parent whose child holds 200 MiB: the whole tree counts, as a launched server's does
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; x = bytearray(200 * 2**20); time.sleep(60)'])")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: until the grandchild holds its memory
            kids = psutil.Process(parent.pid).children(recursive=True)
            if kids and kids[0].memory_info().rss > 190 * 2**20:
                break
            time.sleep(0.1)
        alone, with_tree = Sampler([], 1.0), Sampler([], 1.0)
        with_tree.count_tree(parent.pid)
        alone.sample_now()
        with_tree.sample_now()
        assert with_tree.rows[0]["rss_mib"] - alone.rows[0]["rss_mib"] > 190
    finally:
        for kid in psutil.Process(parent.pid).children(recursive=True):
            kid.kill()
        parent.kill()
        parent.wait(30)


def test_an_external_servers_memory_is_null_with_a_reason():
    from llem.measure.window_parts import _rss_peak

    assert _rss_peak([62.0], "external")["cpu_rss_peak_mib"] is None
    assert "server=external" in _rss_peak([62.0], "external")["cpu_rss_null_reason"]
    assert _rss_peak([62.0, 900.0], "launch") == {"cpu_rss_peak_mib": 900.0, "cpu_rss_null_reason": None}
