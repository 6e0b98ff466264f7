"""Doubt flags: what makes a measured number doubtful, said with the numbers that were seen.

Each flag has a stable short ``code`` (for filtering results) and a ``message`` a person reads.
Every check reads only what the GPU reported: a field that is None (a GPU that cannot read it)
is never flagged and never raises. The thresholds below were derived from a real H100 NVML trace
(4 s idle, 6 s heavy matmul, 6 s light kernels, 6 s loaded idle, sampled every ~24 ms), the one
the replay tests use to force each flag on and off, and from llem runs on that GPU.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from llem.energy.nvml import throttle_names
from llem.energy.window import COUNTER_UPDATE_S, MIN_WINDOW_UPDATES, WindowEnergy

# A window shorter than 10 counter updates (~1 s) is coarse: the counter steps every ~100 ms,
# so each edge can miss up to one step: ~70 J under a 700 W load, 10 % of a 1 s window's energy.
SHORT_WINDOW_S = MIN_WINDOW_UPDATES * COUNTER_UPDATE_S
# Temperature drift (mean of the window's last tenth − mean of its first tenth) that means no thermal
# steady state; a drift, not the span, since a prefill burst lifts the temperature for a sample or two
# (seen on the H100 at batch 16: 55 °C with one sample at 64 °C, no drift). At fixed clocks
# (loaded idle, SM 1980 MHz) the trace's power falls ~0.45 W/°C (124.6 W at 40 °C, 123.7 W at 38 °C),
# so 10 °C moves the floor ~4.5 W (~3.6 %), beyond the 2 % the counter and the power integral agree to.
# From cold, the heavy phase drifts ~+20 °C (flagged); its last 5 s span 50 → 57 °C (not flagged).
TEMP_DRIFT_C = 10
# Idle power coefficient of variation above which a window is no floor. Settled idle in the trace:
# CV 0.4 % (device idle, 71.3 W) and 0.4 % (loaded idle, 123.9 W); the loaded-idle phase taken from its
# first sample, which still holds ~0.3 s of the light load's tail (283 → 127 W), has CV 11.6 %.
BASELINE_CV_MAX = 0.05
# Readings that stay identical for longer than this are stale. The counter steps every ~0.1 s and draws
# ≥ 7 J per step even at the 71 W floor: its longest unchanged run in the trace is 0.10 s. Instant power
# repeats longer (0.28 s at idle, 0.18 s while busy), so it is only judged while the GPU is busy.
STALE_S = 1.0
# A gap between two samples of one GPU larger than max(5 × the window's median interval, 0.5 s) means
# the sampler was starved. The trace's worst gap, 0.23 s (9.5 × its 24 ms median) as the heavy phase
# launched, is not flagged: the counter covers it exactly and the heavy phase's integral stays within 2 %.
GAP_FACTOR = 5.0
GAP_MIN_S = 0.5
BASELINE_KINDS = ("device_idle", "loaded_idle")


@dataclass(frozen=True)
class Flag:
    code: str  # stable short code, for filtering in notebooks
    message: str  # one sentence a person reads: what was seen, with numbers, and why it matters


def _by_gpu(rows: List[Dict[str, Any]]) -> Dict[int, List[Dict[str, Any]]]:
    """Each GPU's rows, in time order (rows of no GPU are dropped)."""
    out: Dict[int, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("gpu_index") is not None and r.get("t_s") is not None:
            out.setdefault(r["gpu_index"], []).append(r)
    return {i: sorted(rs, key=lambda r: r["t_s"]) for i, rs in sorted(out.items())}


def _gpus(indices: List[int]) -> str:
    return ("GPU " if len(indices) == 1 else "GPUs ") + ", ".join(str(i) for i in indices)


def _longest_unchanged_s(rows: List[Dict[str, Any]], key: str, busy_only: bool = False) -> float:
    """The longest span over which consecutive rows read the same non-None ``key``."""
    best, start = 0.0, None
    for prev, cur in zip(rows, rows[1:]):
        same = prev.get(key) is not None and prev.get(key) == cur.get(key)
        if same and busy_only:
            same = all((r.get("gpu_util_pct") or 0) > 0 for r in (prev, cur))
        if same:
            start = prev["t_s"] if start is None else start
            best = max(best, cur["t_s"] - start)
        else:
            start = None
    return best


def _stale(rows: List[Dict[str, Any]]) -> Optional[str]:
    """What was stale in one GPU's rows, or None."""
    counter_s = _longest_unchanged_s(rows, "energy_counter_mj")
    if counter_s > STALE_S:
        return f"the energy counter did not change for {counter_s:.2f} s (it steps every ~{COUNTER_UPDATE_S:.1f} s)"
    power_s = _longest_unchanged_s(rows, "power_instant_w", busy_only=True)
    if power_s > STALE_S:
        return f"instant power stayed at the same value for {power_s:.2f} s while the GPU was busy"
    gaps = [b["t_s"] - a["t_s"] for a, b in zip(rows, rows[1:])]
    if len(gaps) >= 2:
        median = statistics.median(gaps)
        limit = max(GAP_FACTOR * median, GAP_MIN_S)
        if max(gaps) > limit:
            return f"no sample for {max(gaps):.2f} s against a median interval of {median:.3f} s (sampler starved)"
    return None


def edge_drift_c(temps: List[float]) -> Optional[float]:
    """Temperature drift over a window: mean of its last tenth minus mean of its first tenth (at least
    one sample each), so a brief spike (a prefill burst) is not mistaken for a drift."""
    if len(temps) < 2:
        return None
    k = max(1, len(temps) // 10)
    return sum(temps[-k:]) / k - sum(temps[:k]) / k


def window_flags(window: WindowEnergy, rows: List[dict], gpu_facts: List[dict],
                 other_processes: Dict[int, int], min_window_s: float = 0.0, hint: str = "") -> List[Flag]:
    """Doubt flags of one measured window: ``rows`` are its sampler rows, ``gpu_facts`` the metered
    GPUs' ``GpuReader.facts()``, ``other_processes`` GPU index → processes not of this job;
    ``min_window_s`` the window asked for (measure.min_window_s), ``hint`` what the user can change."""
    flags: List[Flag] = []
    phase = window.phase
    per_gpu = _by_gpu(rows)
    metered = {f.get("index") for f in gpu_facts if f.get("index") is not None} | set(per_gpu)

    if window.energy_j is not None and window.duration_s < max(min_window_s, SHORT_WINDOW_S):
        s = window.duration_s
        under = (f"under measure.min_window_s={min_window_s:g} s" if s >= SHORT_WINDOW_S else
                 f"under {MIN_WINDOW_UPDATES} energy-counter updates")
        flags.append(Flag("short_window", (
            f"{phase} window lasted {s:.2f} s, {under}: the counter steps every ~{COUNTER_UPDATE_S:.1f} s and each "
            f"edge can miss a step, up to {200 * COUNTER_UPDATE_S / s:.0f} % of the window's energy"
            f"{'; ' + hint if hint else ''}")))

    busy = {i: n for i, n in sorted((other_processes or {}).items()) if n and i in metered}
    if busy:
        seen = ", ".join(f"GPU {i}: {n}" for i, n in busy.items())
        flags.append(Flag("shared_gpu", (
            f"other processes held a context on a metered GPU during {phase} ({seen}): the energy counter "
            "includes their work and their idle draw, which cannot be told apart from this job's")))

    mig = [f["index"] for f in gpu_facts if f.get("mig_enabled") is True]
    if mig:
        flags.append(Flag("mig", (
            f"MIG mode is on for {_gpus(mig)}: the energy counter and power cover the whole GPU, every MIG "
            "instance included, not this job's slice")))

    no_persistence = [f["index"] for f in gpu_facts if f.get("persistence_mode") is False]
    if no_persistence:
        flags.append(Flag("persistence_off", (
            f"persistence mode is off on {_gpus(no_persistence)}: the driver may unload between jobs, resetting "
            "clocks and the energy counter, so runs may start from a different state")))

    throttled = []
    for i, rs in per_gpu.items():
        names: List[str] = []
        hit = 0
        for r in rs:
            found = throttle_names(r["clock_event_reasons"]) if r.get("clock_event_reasons") else []
            hit += bool(found)
            names.extend(n for n in found if n not in names)
        if names:
            throttled.append(f"GPU {i} by {', '.join(names)} in {hit} of {len(rs)} samples")
    if throttled:
        flags.append(Flag("throttled", (
            f"clocks were slowed by heat or a hardware limit during {phase} ({'; '.join(throttled)}): the work ran "
            "slower than this GPU normally runs it, so its time and energy are not the usual figures")))

    drift = []
    for i, rs in per_gpu.items():
        temps = [r["temperature_c"] for r in rs if r.get("temperature_c") is not None]
        moved = edge_drift_c(temps)
        if moved is not None and abs(moved) >= TEMP_DRIFT_C:
            drift.append(f"GPU {i}: {temps[0]} → {temps[-1]} °C, {moved:+.1f} °C between the window's first and "
                         "last tenths")
    if drift:
        flags.append(Flag("temp_drift", (
            f"GPU temperature moved by {TEMP_DRIFT_C} °C or more during {phase} ({'; '.join(drift)}): the GPU was "
            "not at thermal steady state, and its power at the same work changes with temperature")))

    stale = [f"GPU {i}: {why}" for i, rs in per_gpu.items() if (why := _stale(rs)) is not None]
    if stale:
        flags.append(Flag("power_stale", (
            f"power readings were stale during {phase} ({'; '.join(stale)}): the time series and any "
            "integrated energy miss that span")))
    return flags


def baseline_flags(kind: str, rows: List[dict]) -> List[Flag]:
    """Doubt flags of an idle window (``kind`` device_idle or loaded_idle) from its sampler rows."""
    if kind not in BASELINE_KINDS:
        raise ValueError(f"baseline kind {kind!r} is not one of {', '.join(BASELINE_KINDS)}")
    unstable = []
    for i, rs in _by_gpu(rows).items():
        watts = [r.get("power_instant_w") if r.get("power_instant_w") is not None else r.get("power_average_w")
                 for r in rs]
        watts = [w for w in watts if w is not None]
        if len(watts) < 2:
            continue
        mean = statistics.fmean(watts)
        cv = statistics.pstdev(watts) / mean if mean > 0 else 0.0
        if cv > BASELINE_CV_MAX:
            unstable.append(f"GPU {i}: CV {100 * cv:.1f} % over {len(watts)} samples, "
                            f"{min(watts):.1f}–{max(watts):.1f} W around a mean of {mean:.1f} W")
    if not unstable:
        return []
    return [Flag("baseline_unstable", (
        f"the {kind} baseline was not flat ({'; '.join(unstable)}; a settled floor varies under "
        f"{100 * BASELINE_CV_MAX:.0f} %): it likely caught the tail of earlier work or other activity, and "
        "every adjusted energy moves with it"))]


def host_flags(job_dir: Path, window: WindowEnergy) -> List[Flag]:
    """``shared_host``: other llem jobs held this host during the window while either used the host
    itself (device=cpu, codecarbon), which the host lock (llem/support/locks.py) exists to prevent; the
    lock's notes say which and for how long. Never raises: a flag check must not fail a job."""
    try:
        from llem.support.locks import host_overlaps

        to_epoch = time.time() - time.perf_counter()  # the window's clock (perf_counter) → the notes' (epoch)
        seen = host_overlaps(job_dir, window.t0 + to_epoch, window.t1 + to_epoch)
    except Exception as exc:
        logging.getLogger(__name__).debug("host overlap not checked: %s", exc)
        return []
    if not seen:
        return []
    jobs = "; ".join(f"{use.describe()} for {seconds:.1f} s" for use, seconds in seen)
    return [Flag("shared_host", (
        f"other llem jobs ran on this host during the {window.duration_s:.1f} s {window.phase} window ({jobs}): "
        "they shared its CPUs, and any host meter counted their work too, so times and host energy are disturbed"))]
