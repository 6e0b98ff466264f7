"""Idle floors and other tenants of the job's GPUs.

The device-idle baseline is measured by the job's parent, which never opens a CUDA context, before
the measurement process starts: the floor the GPU draws whether or not anyone measures (an H100 read
71.5 W here, SM clock 345 MHz, ~3 s after the last context closed). ``other_processes`` tells which
GPUs hold contexts that are not this job's (they make the energy counter doubtful).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from llem.energy.nvml import GpuReader, open_gpus
from llem.energy.window import EnergyMeter, Sampler


@dataclass
class DeviceIdle:
    """The no-context idle floor, measured by the parent before the measurement process starts."""

    power_w_per_gpu: List[Optional[float]] = field(default_factory=list)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def power_w(self) -> Optional[float]:
        """Summed over the job's GPUs; None when any GPU's floor is unknown."""
        watts = self.power_w_per_gpu
        return None if not watts or any(w is None for w in watts) else float(sum(watts))


def other_processes(gpus: List[GpuReader], expect_own: bool) -> Dict[int, int]:
    """GPU index → number of processes other than this job's holding a context on it."""
    import psutil

    me = psutil.Process()
    own = {me.pid} | {c.pid for c in me.children(recursive=True)}
    if me.parent() is not None:
        own.add(me.parent().pid)
    out = {}
    for gpu in gpus:
        pids = gpu.processes()
        if pids is None:
            continue
        others = [p for p in pids if p not in own]
        if expect_own and pids and len(others) == len(pids):  # PIDs from another namespace: count instead
            others = others[1:]
        if others:
            out[gpu.index] = len(others)
    return out


def device_idle_baseline(config: Any, gpus_required: int) -> DeviceIdle:
    """Idle power with no CUDA context: wait ``settle_s`` for the GPU to drop its clocks, then meter."""
    result = DeviceIdle()
    gpus, warnings, reason = open_gpus(gpus_required)
    result.warnings.extend(warnings)
    if not gpus:
        return result
    sampler = Sampler(gpus, config.energy.sample_interval_ms / 1000.0).start()
    try:
        busy = other_processes(gpus, expect_own=False)
        if busy:
            result.warnings.append(f"device idle baseline taken while other processes held GPUs {busy}: it is too high")
        sampler.phase = "settle"
        time.sleep(config.baseline.settle_s)
        window = EnergyMeter(gpus, sampler).idle("device_idle", config.baseline.device_idle_s)
    finally:
        sampler.stop()
    result.power_w_per_gpu = window.power_per_gpu_w
    result.rows = [r for r in sampler.rows if r["phase"] == "device_idle"]
    result.warnings.extend(window.warnings)
    return result
