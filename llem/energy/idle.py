"""Idle floors and other tenants of the job's GPUs.

The device-idle baseline is measured by the job's parent, which never opens a CUDA context, before
the measurement process opens one (it is spawned first and imports its engine meanwhile, which touches
no device: a context seen when the floor ends makes it doubtful): the floor the GPU draws whether or not
anyone measures (an H100 read 71.5 W here, SM clock 345 MHz, ~3 s after the last context closed).
``other_processes`` tells which GPUs hold contexts that are not this job's (they make the energy counter
doubtful).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from llem.energy.nvml import GpuReader, open_gpus
from llem.energy.window import EnergyMeter, Sampler


@dataclass
class DeviceIdle:
    """The no-context idle floor, measured by the parent before the measurement process starts."""

    power_w_per_gpu: List[Optional[float]] = field(default_factory=list)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    source: Optional[str] = None  # measured (by this job) or reused (from an earlier job of the sweep)
    taken_at: Optional[float] = None  # epoch seconds the floor was metered
    job: Optional[str] = None  # the job dir (name) that metered it, when reused

    @property
    def power_w(self) -> Optional[float]:
        """Summed over the job's GPUs; None when any GPU's floor is unknown."""
        watts = self.power_w_per_gpu
        return None if not watts or any(w is None for w in watts) else float(sum(watts))


log = logging.getLogger(__name__)
STORE = ".llem-device-idle"  # in the sweep dir: one file per set of GPUs (by UUID)


def _store_file(store: Path, uuids: List[str]) -> Path:
    key = hashlib.sha256(",".join(sorted(uuids)).encode()).hexdigest()[:16]
    return store / STORE / f"{key}.json"


def reuse_device_idle(store: Path, uuids: List[str], max_age_s: float) -> Optional[DeviceIdle]:
    """The device-idle floor an earlier job of the sweep metered on these GPUs, while younger than
    ``max_age_s`` and taken cleanly (no warning, no unstable flag); else None (measure again)."""
    if max_age_s <= 0 or not uuids:
        return None
    try:
        saved = json.loads(_store_file(store, uuids).read_text())
    except (OSError, ValueError):
        return None
    age_s = time.time() - float(saved.get("taken_at", 0))
    if saved.get("uuids") != sorted(uuids) or not 0 <= age_s <= max_age_s or saved.get("unclean"):
        return None
    log.info("device-idle baseline reused: %.1f W, metered %.0f s ago by %s (baseline.device_idle_reuse_s=%g)",
             sum(saved["power_w_per_gpu"]), age_s, saved.get("job"), max_age_s)
    return DeviceIdle(power_w_per_gpu=list(saved["power_w_per_gpu"]), source="reused",
                      taken_at=float(saved["taken_at"]), job=saved.get("job"))


def remember_device_idle(store: Path, uuids: List[str], idle: DeviceIdle, job: str, unclean: bool) -> None:
    """Keep a freshly metered floor for later jobs of the sweep (atomically; a failure only logs)."""
    if not uuids or idle.power_w is None or idle.taken_at is None:
        return
    path = _store_file(store, uuids)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"uuids": sorted(uuids), "power_w_per_gpu": idle.power_w_per_gpu,
                                   "taken_at": idle.taken_at, "job": job, "unclean": unclean}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("device-idle baseline not kept for later jobs: %s", exc)


def taken_at_iso(idle: DeviceIdle) -> Optional[str]:
    if idle.taken_at is None:
        return None
    return datetime.fromtimestamp(idle.taken_at, timezone.utc).isoformat(timespec="seconds")


def other_processes(gpus: List[GpuReader], expect_own: bool, server_pid: Optional[int] = None) -> Dict[int, int]:
    """GPU index → number of processes other than this job's holding a context on it (a server the job
    launched, and its own processes, are the job's)."""
    import psutil

    me = psutil.Process()
    own = {me.pid} | {c.pid for c in me.children(recursive=True)}
    if me.parent() is not None:
        own.add(me.parent().pid)
    if server_pid is not None:
        try:
            server = psutil.Process(server_pid)
            own |= {server_pid} | {c.pid for c in server.children(recursive=True)}
        except psutil.Error:
            pass
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


def contexts(gpus: List[GpuReader]) -> Dict[int, int]:
    """GPU index → processes holding a context on it, this job's own included (none may, during the floor)."""
    out = {}
    for gpu in gpus:
        pids = gpu.processes()
        if pids:
            out[gpu.index] = len(pids)
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
        busy = contexts(gpus)
        if busy:
            result.warnings.append(f"device idle baseline taken while other processes held GPUs {busy}: it is too high")
        sampler.phase = "settle"
        time.sleep(config.baseline.settle_s)
        result.taken_at = time.time()
        window = EnergyMeter(gpus, sampler).idle("device_idle", config.baseline.device_idle_s)
        opened = contexts(gpus)  # the measurement process imports its engine meanwhile: it must open none
        if opened and not busy:
            result.warnings.append(f"CUDA contexts were open on GPUs {opened} when the device-idle baseline ended "
                                   "(the job's measurement process, importing its engine, or another process): it "
                                   "is too high")
    finally:
        sampler.stop()
    result.power_w_per_gpu = window.power_per_gpu_w
    result.source = "measured"
    result.rows = [r for r in sampler.rows if r["phase"] == "device_idle"]
    result.warnings.extend(window.warnings)
    return result
