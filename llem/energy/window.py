"""Measurement windows over GPU energy, and the sampler thread behind the time series.

A window synchronises the device and reads every GPU's hardware energy counter at both
edges; its energy is the counter delta (integer mJ, so no float drift and no wrap at the
counter's 64 bits). Where a GPU has no counter, the energy is the trapezoid integral of
the sampled *instant* power, falling back to the 1 s averaged power with a warning.
With no GPU at all the energy is None with a reason — never 0. What makes a window's number
doubtful (too short, throttled, …) is said by :mod:`llem.energy.flags`, not here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from llem.energy.nvml import GpuReader, throttle_names

log = logging.getLogger(__name__)

COUNTER_UPDATE_S = 0.1  # the energy counter steps about every 100 ms
MIN_WINDOW_UPDATES = 10  # a window shorter than this many counter updates is flagged (llem.energy.flags)


class Sampler:
    """Samples every GPU (and the host CPU) at a fixed interval on a daemon thread."""

    def __init__(self, gpus: List[GpuReader], interval_s: float, clock: Callable[[], float] = time.perf_counter):
        self.gpus = gpus
        self.interval_s = interval_s
        self.clock = clock
        self.phase = "setup"
        self.rows: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._trees: List[int] = []  # processes whose whole trees' memory counts with this one's (a launched server)
        try:
            import psutil

            self._proc = psutil.Process()
            psutil.cpu_percent(None)
            self._psutil = psutil
        except ImportError:
            self._psutil = None

    def sample_now(self, t: Optional[float] = None, cpu: bool = False) -> None:
        """One row per GPU at time ``t`` (now by default). ``cpu``: also the host CPU utilisation
        since the previous ``cpu`` sample (only the sampler thread asks, so intervals are regular)."""
        t = self.clock() if t is None else t
        host: Dict[str, Any] = {"cpu_util_pct": None, "rss_mib": None}
        if self._psutil is not None:
            host = {"cpu_util_pct": self._psutil.cpu_percent(None) if cpu else None,
                    "rss_mib": (self._proc.memory_info().rss + self._trees_rss()) / 2**20}
        rows = [{"t_s": t, "phase": self.phase, **gpu.sample(), **host} for gpu in self.gpus]
        if not rows:
            rows = [{"t_s": t, "phase": self.phase, "gpu_index": None, **host}]
        with self._lock:
            self.rows.extend(rows)

    def count_tree(self, pid: int) -> None:
        """Add the resident memory of ``pid`` and all its descendants to every later sample's ``rss_mib``
        (a server llem launched does the inference in its own processes)."""
        self._trees.append(pid)

    def _trees_rss(self) -> int:
        total = 0
        for pid in self._trees:
            try:
                root = self._psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except self._psutil.Error:  # gone: it holds no memory
                continue
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except self._psutil.Error:
                    pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_now(cpu=True)
            except Exception as exc:  # a sampler must never take the job down
                log.warning("sampler: %s", exc)

    def start(self) -> Sampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llem-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def between(self, t0: float, t1: float) -> List[Dict[str, Any]]:
        with self._lock:
            return [r for r in self.rows if t0 <= r["t_s"] <= t1]


def trapezoid_j(points: List[tuple]) -> Optional[float]:
    """∫ power dt over (t_s, watts) points; None with fewer than two valid points."""
    pts = sorted((t, w) for t, w in points if w is not None)
    if len(pts) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:]))


@dataclass
class WindowEnergy:
    """Energy and power of one window. ``energy_j`` is None when it could not be measured."""

    phase: str
    t0: float
    t1: float
    energy_j: Optional[float] = None
    energy_j_per_gpu: List[Optional[float]] = field(default_factory=list)
    integrated_j: Optional[float] = None  # trapezoid of instant power, for cross-checking
    method: str = "none"
    avg_power_w: Optional[float] = None
    peak_power_w: Optional[float] = None
    peak_memory_used_mib: Optional[float] = None
    throttle: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    null_reason: Optional[str] = None  # why energy_j is None, when it is

    @property
    def duration_s(self) -> float:
        return self.t1 - self.t0

    @property
    def power_per_gpu_w(self) -> List[Optional[float]]:
        d = self.duration_s
        return [e / d if (e is not None and d > 0) else None for e in self.energy_j_per_gpu]


@dataclass
class _Mark:
    phase: str
    t0: float
    counters: List[Optional[int]]


class EnergyMeter:
    """Opens and closes measurement windows; knows the GPUs, the sampler and the device sync."""

    def __init__(self, gpus: List[GpuReader], sampler: Sampler, sync: Callable[[], None] = lambda: None,
                 null_reason: Optional[str] = None):
        self.gpus = gpus
        self.sampler = sampler
        self.sync = sync
        self.null_reason = null_reason or ("no GPU is metered" if not gpus else None)

    def start(self, phase: str) -> _Mark:
        self.sync()
        self.sampler.phase = phase
        counters = [g.energy_mj() for g in self.gpus]
        t0 = self.sampler.clock()
        self.sampler.sample_now(t0)
        return _Mark(phase, t0, counters)

    def stop(self, mark: _Mark) -> WindowEnergy:
        self.sync()
        counters = [g.energy_mj() for g in self.gpus]
        t1 = self.sampler.clock()
        self.sampler.sample_now(t1)
        return self.evaluate(mark, counters, t1)

    def evaluate(self, mark: _Mark, end_counters: List[Optional[int]], t1: float) -> WindowEnergy:
        w = WindowEnergy(mark.phase, mark.t0, t1)
        if not self.gpus:
            w.null_reason = self.null_reason
            w.warnings.append(f"GPU energy not measured: {w.null_reason}")
            return w
        rows = self.sampler.between(mark.t0, t1)
        methods = set()
        integrated_total = 0.0
        integrated_ok = True
        for gpu, c0, c1 in zip(self.gpus, mark.counters, end_counters):
            mine = [r for r in rows if r.get("gpu_index") == gpu.index]
            instant = trapezoid_j([(r["t_s"], r.get("power_instant_w")) for r in mine])
            average = trapezoid_j([(r["t_s"], r.get("power_average_w")) for r in mine])
            if instant is None:
                integrated_ok = False
            else:
                integrated_total += instant
            if c0 is not None and c1 is not None and c1 < c0:
                w.warnings.append(
                    f"GPU {gpu.index}: energy counter went backwards (driver reload?); integrated power instead"
                )
            if c0 is not None and c1 is not None and c1 >= c0:
                w.energy_j_per_gpu.append((c1 - c0) / 1000.0)
                methods.add("nvml_counter")
            elif instant is not None:
                w.energy_j_per_gpu.append(instant)
                methods.add("nvml_power_instant_integral")
            elif average is not None:
                w.energy_j_per_gpu.append(average)
                methods.add("nvml_power_average_integral")
                w.warnings.append(f"GPU {gpu.index}: integrated the 1 s averaged power (lags load changes by ~10%)")
            else:
                w.energy_j_per_gpu.append(None)
            for r in mine:
                if r.get("clock_event_reasons"):
                    w.throttle.extend(n for n in throttle_names(r["clock_event_reasons"]) if n not in w.throttle)
        if any(e is None for e in w.energy_j_per_gpu):
            w.null_reason = "a GPU offers neither an energy counter nor power readings"
            w.warnings.append(f"GPU energy not measured: {w.null_reason}")
            w.energy_j_per_gpu = [None] * len(self.gpus)
        else:
            w.energy_j = sum(w.energy_j_per_gpu)
            w.method = "+".join(sorted(methods))
            if w.duration_s > 0:
                w.avg_power_w = w.energy_j / w.duration_s
        w.integrated_j = integrated_total if integrated_ok else None
        by_t: Dict[float, float] = {}
        for r in rows:
            p = r.get("power_instant_w") if r.get("power_instant_w") is not None else r.get("power_average_w")
            if p is not None:
                by_t[r["t_s"]] = by_t.get(r["t_s"], 0.0) + p
        w.peak_power_w = max(by_t.values()) if by_t else None
        mem = [r["memory_used_mib"] for r in rows if r.get("memory_used_mib") is not None]
        w.peak_memory_used_mib = max(mem) if mem else None
        return w

    def idle(self, phase: str, seconds: float) -> WindowEnergy:
        """An idle window of ``seconds``: its power per GPU is the idle floor."""
        mark = self.start(phase)
        time.sleep(seconds)
        return self.stop(mark)
