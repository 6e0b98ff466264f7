"""Doubt flags on windows replayed from the real H100 NVML trace: each flag forced on and off."""

from __future__ import annotations

import re
import statistics
from typing import Dict, List

import pytest

from llem.energy import flags
from llem.energy.flags import Flag, baseline_flags, window_flags
from llem.energy.nvml import THROTTLE_BITS
from llem.energy.window import COUNTER_UPDATE_S
from tests.fake_nvml import FakeGpu, default_uuid
from tests.replay import HW_THERMAL, PHASES, SW_POWER_CAP, Rig, csv_row_at, make_rig, phase_span

IDLE_REASON = 0x1
SW_THERMAL = 0x20


def found(rig: Rig, w, other_processes: Dict[int, int] = None) -> List[Flag]:
    """window_flags as the measuring process calls it: the window's rows, the GPUs' facts."""
    return window_flags(w, rig.sampler.between(w.t0, w.t1), [g.facts() for g in rig.gpus], other_processes or {})


def codes(fl: List[Flag]) -> List[str]:
    return [f.code for f in fl]


def one(fl: List[Flag], code: str) -> Flag:
    hits = [f for f in fl if f.code == code]
    assert len(hits) == 1, codes(fl)
    return hits[0]


def steady_heavy(trace):
    """The heavy phase's last 5 s: full load, past the cold-start temperature climb."""
    t1 = phase_span(trace, "heavy")[1]
    return t1 - 5.0, t1


# ---------------------------------------------------------------------------------------
# the trace's own windows: nothing is doubtful about a steady window


@pytest.mark.parametrize("step", [0.02, 0.1])
def test_steady_windows_raise_no_flag(trace, step):
    for phase, (t0, t1) in [("idle_before", phase_span(trace, "idle_before")), ("heavy", steady_heavy(trace)),
                            ("idle_after", phase_span(trace, "idle_after"))]:
        rig = make_rig(trace, n_gpus=2, shifts=[0.0, 0.3])
        assert found(rig, rig.window(phase, t0, t1, step)) == [], phase


# ---------------------------------------------------------------------------------------
# short_window


def test_short_window(trace):
    t0 = phase_span(trace, "heavy")[0] + 1.0
    rig = make_rig(trace)
    short = rig.window("warmup", t0, t0 + 0.5)
    msg = one(found(rig, short), "short_window").message
    assert "warmup window lasted 0.50 s" in msg and "under 10 energy-counter updates" in msg
    assert not any("energy-counter updates" in m for m in short.warnings)  # only the flag says it now
    rig = make_rig(trace)
    assert "short_window" not in codes(found(rig, rig.window("warmup", t0, t0 + 1.5)))


def test_short_window_without_energy_is_not_flagged(trace):
    t0 = phase_span(trace, "heavy")[0] + 1.0
    rig = make_rig(trace, has_counter=False, has_instant=False, has_average=False)
    w = rig.window("load", t0, t0 + 0.5)
    assert w.energy_j is None
    assert "short_window" not in codes(found(rig, w))


# ---------------------------------------------------------------------------------------
# shared_gpu, mig, persistence_off: what the GPU's facts and processes say


def test_shared_gpu(trace):
    t0, t1 = steady_heavy(trace)
    gpus = [FakeGpu(default_uuid(0)), FakeGpu(default_uuid(1), pids=[4242, 4343])]
    rig = make_rig(trace, n_gpus=2, gpus=gpus)
    w = rig.window("measure", t0, t1, 0.1)
    busy = {g.index: len(g.processes()) for g in rig.gpus if g.processes()}  # as the caller counts them
    assert busy == {1: 2}
    msg = one(found(rig, w, busy), "shared_gpu").message
    assert "GPU 1: 2" in msg and "GPU 0" not in msg
    assert "shared_gpu" not in codes(found(rig, w, {}))
    assert "shared_gpu" not in codes(found(rig, w, {0: 0}))
    assert "shared_gpu" not in codes(found(rig, w, {5: 3}))  # a GPU this job does not meter


@pytest.mark.parametrize("code, gpu_option, on, off", [
    ("mig", "mig_mode", 1, 0),
    ("persistence_off", "persistence_mode", 0, 1),
])
def test_gpu_mode_flags(trace, code, gpu_option, on, off):
    t0, t1 = steady_heavy(trace)
    for value, expected in ((on, True), (off, False)):
        gpus = [FakeGpu(default_uuid(0)), FakeGpu(default_uuid(1), **{gpu_option: value})]
        rig = make_rig(trace, n_gpus=2, gpus=gpus)
        fl = found(rig, rig.window("measure", t0, t1, 0.1))
        assert (code in codes(fl)) is expected, (value, codes(fl))
        if expected:
            assert "GPU 1" in one(fl, code).message and "GPU 0" not in one(fl, code).message


def test_unreadable_facts_and_fields_are_not_flagged(trace):
    t0, t1 = steady_heavy(trace)
    rig = make_rig(trace, n_gpus=2)
    w = rig.window("measure", t0, t1, 0.1)
    facts = [{"index": 0, "mig_enabled": None, "persistence_mode": None}, {"index": 1}]
    blank = [{k: (v if k in ("t_s", "phase", "gpu_index") else None) for k, v in r.items()}
             for r in rig.sampler.between(w.t0, w.t1)]
    assert window_flags(w, blank, facts, {}) == []
    assert baseline_flags("loaded_idle", blank) == []
    no_gpu = [{"t_s": w.t0, "phase": "measure", "gpu_index": None}, {"t_s": w.t1, "phase": "measure",
                                                                      "gpu_index": None}]
    assert window_flags(w, no_gpu, [], {}) == []
    assert baseline_flags("device_idle", no_gpu) == []


# ---------------------------------------------------------------------------------------
# throttled


def test_throttled_ignores_idle_and_power_cap_reasons_of_the_trace(trace):
    t0, t1 = phase_span(trace, "heavy")
    rig = make_rig(trace)
    w = rig.window("heavy", t0, t1)
    reasons = {r["clock_event_reasons"] for r in rig.sampler.between(w.t0, w.t1)}
    assert IDLE_REASON in reasons and SW_POWER_CAP in reasons  # the normal reasons are there…
    assert not any(r & bit for r in reasons for bit in THROTTLE_BITS)  # …and nothing else
    assert "throttled" not in codes(found(rig, w))


@pytest.mark.parametrize("bits, names", [(HW_THERMAL, "hw_thermal"), (SW_THERMAL | SW_POWER_CAP, "sw_thermal")])
def test_throttled_by_heat(trace, bits, names):
    t0, t1 = steady_heavy(trace)
    rig = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 1.2, bits)])
    w = rig.window("heavy", t0, t1)
    rows = rig.sampler.between(w.t0, w.t1)
    hot = sum(1 for r in rows if t0 + 1.0 <= r["t_s"] <= t0 + 1.2)
    assert hot >= 10
    msg = one(found(rig, w), "throttled").message
    assert f"GPU 0 by {names} in {hot} of {len(rows)} samples" in msg
    capped_only = make_rig(trace, throttle_extra=[(t0 + 1.0, t0 + 1.2, SW_POWER_CAP | IDLE_REASON)])
    assert "throttled" not in codes(found(capped_only, capped_only.window("heavy", t0, t1)))


# ---------------------------------------------------------------------------------------
# temp_drift


def test_temp_drift_on_the_trace_phases(trace):
    drifts = {}
    for phase in PHASES:
        t0, t1 = phase_span(trace, phase)
        rig = make_rig(trace)
        window = rig.window(phase, t0, t1)
        temps = [r["temperature_c"] for r in rig.sampler.rows if r["phase"] == phase]
        drifts[phase] = flags.edge_drift_c(temps)
        assert ("temp_drift" in codes(found(rig, window))) is (abs(drifts[phase]) >= flags.TEMP_DRIFT_C)
    assert drifts["heavy"] >= 15  # the cold start: flagged
    assert abs(drifts["idle_after"]) < flags.TEMP_DRIFT_C and drifts["idle_before"] == 0  # not flagged


def test_temp_drift_not_raised_once_the_load_is_warm(trace):
    t0, t1 = steady_heavy(trace)
    temps = [r["temperature_c"] for r in trace if t0 <= r["t_s"] <= t1]
    assert 5 <= max(temps) - min(temps) < flags.TEMP_DRIFT_C  # still warming, under the threshold
    rig = make_rig(trace)
    assert "temp_drift" not in codes(found(rig, rig.window("heavy", t0, t1)))


def test_a_brief_temperature_spike_is_not_a_drift(trace):
    """A prefill burst lifts the temperature for a moment (seen on the H100: 55 °C, one sample at 64 °C):
    the span is large, the drift is not."""
    t0, t1 = steady_heavy(trace)
    rig = make_rig(trace)
    window = rig.window("heavy", t0, t1)
    rows = rig.sampler.between(t0, t1)
    mid = len(rows) // 2
    spiked = [{**r, "temperature_c": r["temperature_c"] + 15} if mid <= k < mid + 2 else r for k, r in enumerate(rows)]
    temps = [r["temperature_c"] for r in spiked]
    assert max(temps) - min(temps) >= flags.TEMP_DRIFT_C
    assert "temp_drift" not in codes(flags.window_flags(window, spiked, [], {}))
    warmed = [{**r, "temperature_c": r["temperature_c"] + (15 if k >= mid else 0)} for k, r in enumerate(rows)]
    assert "temp_drift" in codes(flags.window_flags(window, warmed, [], {}))


def test_temp_drift_names_the_gpu_that_drifted(trace):
    h0 = phase_span(trace, "heavy")[0]
    t0, t1 = h0 + 1.5, h0 + 3.5  # GPU 0: warm load; GPU 1, 1.5 s late: the cold start
    rig = make_rig(trace, n_gpus=2, shifts=[0.0, 1.5])
    msg = one(found(rig, rig.window("heavy", t0, t1)), "temp_drift").message
    first, last = (csv_row_at(trace, t - 1.5)["temperature_c"] for t in (t0, t1))
    assert f"GPU 1: {first} → {last} °C" in msg and "GPU 0" not in msg


# ---------------------------------------------------------------------------------------
# power_stale


def test_trace_sample_gaps_are_not_stale(trace):
    """Sampling at the trace's own instants, its worst gap (0.23 s, as the heavy phase launched) passes."""
    t0, t1 = phase_span(trace, "idle_before")[0], phase_span(trace, "heavy")[1]
    ts = [r["t_s"] for r in trace if t0 <= r["t_s"] <= t1]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert max(gaps) > 5 * statistics.median(gaps)  # a real hiccup, ~10 × the interval
    rig = make_rig(trace)
    assert "power_stale" not in codes(found(rig, rig.window_at("trace", ts)))


def test_power_stale_when_every_reading_freezes(trace):
    t0, t1 = steady_heavy(trace)
    for frozen_s, expected in ((1.5, True), (0.8, False)):
        rig = make_rig(trace, gpus=[FakeGpu(default_uuid(0), stale=(t0 + 1.0, t0 + 1.0 + frozen_s))])
        fl = found(rig, rig.window("heavy", t0, t1))
        assert ("power_stale" in codes(fl)) is expected, frozen_s
        if expected:  # the frozen span, plus the part of a counter step around its edges
            unchanged_s = float(re.search(r"energy counter did not change for ([0-9.]+) s", one(
                fl, "power_stale").message).group(1))
            assert frozen_s <= unchanged_s <= frozen_s + COUNTER_UPDATE_S


def test_power_stale_instant_power_counts_only_while_busy(trace):
    """Without a counter, frozen instant power flags under load, not at idle (where it may repeat)."""
    busy_t0 = steady_heavy(trace)[0]
    idle_t0 = phase_span(trace, "idle_before")[0]
    for t0, expected in ((busy_t0, True), (idle_t0, False)):
        rig = make_rig(trace, gpus=[FakeGpu(default_uuid(0), has_counter=False, stale=(t0 + 1.0, t0 + 2.5))])
        fl = found(rig, rig.window("w", t0, t0 + 3.5))
        assert ("power_stale" in codes(fl)) is expected, t0
        if expected:
            assert "instant power stayed at the same value for 1.50 s while the GPU was busy" in one(
                fl, "power_stale").message


@pytest.mark.parametrize("step", [0.02, 0.1])
def test_power_stale_when_the_sampler_starves(trace, step):
    t0, t1 = steady_heavy(trace)
    rig = make_rig(trace)
    msg = one(found(rig, rig.window("heavy", t0, t1, step, starved=(t0 + 1.0, t0 + 2.0))), "power_stale").message
    assert "no sample for 1.00 s" in msg and "sampler starved" in msg
    rig = make_rig(trace)
    assert "power_stale" not in codes(found(rig, rig.window("heavy", t0, t1, step, starved=(t0 + 1.0, t0 + 1.4))))


# ---------------------------------------------------------------------------------------
# baseline_unstable


def idle_rows(rig: Rig, phase: str, t0: float, t1: float, step: float = 0.1) -> List[dict]:
    w = rig.window(phase, t0, t1, step)
    return rig.sampler.between(w.t0, w.t1)


@pytest.mark.parametrize("step", [0.02, 0.1])
def test_settled_floors_are_stable(trace, step):
    device = idle_rows(make_rig(trace), "device_idle", *phase_span(trace, "idle_before"), step)
    a0, a1 = phase_span(trace, "idle_after")
    loaded = idle_rows(make_rig(trace), "loaded_idle", a0 + 0.3, a1, step)  # past the light load's tail
    assert baseline_flags("device_idle", device) == []
    assert baseline_flags("loaded_idle", loaded) == []


@pytest.mark.parametrize("step", [0.02, 0.1])
def test_baseline_catching_the_tail_of_the_load_is_unstable(trace, step):
    a0, a1 = phase_span(trace, "idle_after")
    rows = idle_rows(make_rig(trace), "loaded_idle", a0, a1, step)
    assert rows[0]["power_instant_w"] > 2 * rows[-1]["power_instant_w"]  # the trace's own tail
    fl = baseline_flags("loaded_idle", rows)
    assert codes(fl) == ["baseline_unstable"]
    assert fl[0].message.startswith("the loaded_idle baseline was not flat (GPU 0: CV ")
    light = idle_rows(make_rig(trace), "device_idle", *phase_span(trace, "light"), step)  # taken under load
    assert codes(baseline_flags("device_idle", light)) == ["baseline_unstable"]


def test_baseline_unstable_names_the_gpu_and_uses_the_average_without_instant_power(trace):
    a0, a1 = phase_span(trace, "idle_after")
    rig = make_rig(trace, n_gpus=2, shifts=[0.0, 1.0], has_instant=False)  # GPU 1 is 1 s behind: still in light
    rows = idle_rows(rig, "loaded_idle", a0 + 1.0, a1)
    assert all(r["power_instant_w"] is None for r in rows)
    msg = one(baseline_flags("loaded_idle", rows), "baseline_unstable").message
    assert "GPU 1: CV" in msg and "GPU 0" not in msg


def test_baseline_kind_is_checked():
    with pytest.raises(ValueError, match="baseline kind"):
        baseline_flags("idle", [])


# ---------------------------------------------------------------------------------------
# every code: declared once with its meaning, raised somewhere, documented


def test_every_flag_code_is_declared_once_and_documented():
    import re
    from pathlib import Path

    from llem.results.flag_codes import FLAG_MEANINGS as MEANINGS

    root = Path(__file__).resolve().parents[1]
    raised = {code for path in (root / "llem").rglob("*.py")
              for code in re.findall(r'Flag\(\s*"(\w+)"', path.read_text())}
    assert raised == set(MEANINGS), (raised ^ set(MEANINGS))
    documented = set(re.findall(r"^\| `(\w+)` \|", (root / "docs" / "method.md").read_text(), re.M))
    assert set(MEANINGS) <= documented, set(MEANINGS) - documented
