"""Replaying the real H100 NVML trace: the trace fixture, reference figures computed straight from
the CSV (a plain scan, sharing no code with the fake), and a meter rig over fake GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pytest

from llem.energy.nvml import GpuReader
from llem.energy.window import EnergyMeter, Sampler
from tests.fake_nvml import FakeClock, FakeNVML
from tests.nvml_trace import TraceMissing, load_trace

Trace = List[Dict[str, object]]
PHASES = ("idle_before", "heavy", "light", "idle_after")
HW_THERMAL = 0x40
SW_POWER_CAP = 0x4


# ---------------------------------------------------------------------------------------
# the trace, read straight from the CSV


def trace_or_fail() -> Trace:
    """The trace rows; a missing file fails the test (never a skip)."""
    try:
        return load_trace()
    except TraceMissing as exc:
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


def looped(trace: Trace, phase: str, total_s: float) -> Trace:
    """``phase``'s rows repeated back to back for ``total_s`` seconds, times and the energy counter
    carried on across each seam (the counter keeps counting): a replay that lasts however long a
    job under test takes, on a loaded machine too, instead of running off the trace's end."""
    rows = [r for r in trace if r["phase"] == phase]
    span_s = rows[-1]["t_s"] - rows[0]["t_s"]
    step_s = span_s / (len(rows) - 1)
    gained_mj = rows[-1]["energy_counter_mj"] - rows[0]["energy_counter_mj"]
    per_row_mj = gained_mj / (len(rows) - 1)
    out: Trace = []
    lap = 0
    while not out or out[-1]["t_s"] < total_s:
        dt = lap * (span_s + step_s) - rows[0]["t_s"]
        dmj = round(lap * (gained_mj + per_row_mj))
        out += [{**r, "t_s": r["t_s"] + dt, "energy_counter_mj": r["energy_counter_mj"] + dmj} for r in rows]
        lap += 1
    return out


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

    def window(self, phase: str, t0: float, t1: float, step: float = 0.02,
               starved: Optional[Tuple[float, float]] = None):
        """Open a window at t0, sample every ``step`` seconds of fake time, close it at t1.
        ``starved``: a span (open interval) in which the sampler takes no sample."""
        ts = grid(t0, t1, step)
        if starved is not None:
            ts = [ts[0]] + [t for t in ts[1:-1] if not starved[0] < t < starved[1]] + [ts[-1]]
        return self.window_at(phase, ts)

    def window_at(self, phase: str, ts: List[float]):
        """Open a window at ts[0], sample at each of ts[1:-1], close it at ts[-1]."""
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

