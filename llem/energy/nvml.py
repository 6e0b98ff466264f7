"""NVML access: which GPUs a job uses (by UUID), and reading each one.

NVML ignores CUDA_VISIBLE_DEVICES, so the visible devices are resolved to NVML indices
here: by UUID (or UUID prefix) where the variable names UUIDs, by PCI order where it names
indices (the measurement process sets CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA agrees).
Everything degrades: no NVML means no readers and a reason, never an exception at import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT (mW); GetPowerUsage is a 1 s average on Hopper
# Clock-event reason bits that mean the GPU was slowed by heat or a hardware limit.
THROTTLE_BITS = {0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake"}


def load_nvml(module: Any = None) -> Tuple[Optional[Any], Optional[str]]:
    """(nvml module initialised, None) or (None, why not)."""
    if module is None:
        try:
            import pynvml as module
        except ImportError:
            return None, "nvidia-ml-py is not installed"
    try:
        module.nvmlInit()
        count = module.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
        return None, f"NVML unavailable ({type(exc).__name__}: {exc})"
    if count == 0:
        try:
            module.nvmlShutdown()
        except Exception:
            pass
        return None, "NVML reports no GPU"
    return module, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_indices(nvml: Any, cuda_visible: Optional[str]) -> Tuple[List[int], List[str]]:
    """NVML indices of the devices CUDA will see, in CUDA's order, and warnings.

    Mirrors CUDA: unset → all; empty → none; entries are indices or (prefixes of) UUIDs;
    the list stops at the first entry that names no device.
    """
    count = nvml.nvmlDeviceGetCount()
    if cuda_visible is None:
        return list(range(count)), []
    uuids = []
    for i in range(count):
        try:
            uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))))
        except Exception:  # a GPU NVML cannot read (lost, no permission) matches no UUID
            uuids.append("")
    out: List[int] = []
    warnings: List[str] = []
    for entry in (e.strip() for e in cuda_visible.split(",")):
        if not entry:
            break
        if entry.startswith("MIG-"):
            warnings.append(f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}): GPU energy is not measured")
            break
        try:
            idx = int(entry)
        except ValueError:
            idx = None
        if idx is not None:
            if not 0 <= idx < count:
                break
        else:
            matches = [i for i, u in enumerate(uuids) if u and (u.startswith(entry) or u.startswith("GPU-" + entry))]
            if len(matches) != 1:
                break
            idx = matches[0]
        if idx in out:
            break
        out.append(idx)
    return out, warnings


@dataclass
class GpuInfo:
    index: int
    uuid: str
    name: str


class GpuReader:
    """Reads one GPU. Every read returns None where the GPU does not support it."""

    def __init__(self, nvml: Any, index: int) -> None:
        self.nvml = nvml
        self.index = index
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.uuid = _text(nvml.nvmlDeviceGetUUID(self.handle))
        self.name = _text(nvml.nvmlDeviceGetName(self.handle))
        self.has_counter = self.energy_mj() is not None
        self.has_instant = self.power_instant_w() is not None

    def _try(self, fn, *args) -> Any:
        try:
            return fn(self.handle, *args)
        except Exception:
            return None

    def energy_mj(self) -> Optional[int]:
        """The hardware energy counter since the driver loaded (mJ, Volta and newer)."""
        value = self._try(self.nvml.nvmlDeviceGetTotalEnergyConsumption)
        return int(value) if value is not None else None

    def power_instant_w(self) -> Optional[float]:
        values = self._try(self.nvml.nvmlDeviceGetFieldValues, [FIELD_POWER_INSTANT])
        if not values or getattr(values[0], "nvmlReturn", 1) != 0:
            return None
        return values[0].value.uiVal / 1000.0

    def power_average_w(self) -> Optional[float]:
        value = self._try(self.nvml.nvmlDeviceGetPowerUsage)
        return value / 1000.0 if value is not None else None

    def sample(self) -> Dict[str, Any]:
        """One time-series row of this GPU (without time and phase)."""
        n = self.nvml
        util = self._try(n.nvmlDeviceGetUtilizationRates)
        mem = self._try(n.nvmlDeviceGetMemoryInfo)
        reasons = self._try(n.nvmlDeviceGetCurrentClocksEventReasons)
        return {
            "gpu_index": self.index,
            "energy_counter_mj": self.energy_mj(),
            "power_instant_w": self.power_instant_w(),
            "power_average_w": self.power_average_w(),
            "temperature_c": self._try(n.nvmlDeviceGetTemperature, 0),  # NVML_TEMPERATURE_GPU
            "sm_clock_mhz": self._try(n.nvmlDeviceGetClockInfo, 1),  # NVML_CLOCK_SM
            "gpu_util_pct": getattr(util, "gpu", None),
            "mem_util_pct": getattr(util, "memory", None),
            "memory_used_mib": mem.used / 2**20 if mem is not None else None,
            "clock_event_reasons": int(reasons) if reasons is not None else None,
        }

    def processes(self) -> Optional[List[int]]:
        """PIDs holding a compute context on this GPU (as NVML sees them), or None."""
        procs = self._try(self.nvml.nvmlDeviceGetComputeRunningProcesses)
        return None if procs is None else [int(p.pid) for p in procs]

    def facts(self) -> Dict[str, Any]:
        n = self.nvml
        limit = self._try(n.nvmlDeviceGetPowerManagementLimit)
        mig = self._try(n.nvmlDeviceGetMigMode)
        persistence = self._try(n.nvmlDeviceGetPersistenceMode)
        mem = self._try(n.nvmlDeviceGetMemoryInfo)
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "power_limit_w": limit / 1000.0 if limit is not None else None,
            "mig_enabled": bool(mig[0]) if isinstance(mig, (list, tuple)) else None,
            "persistence_mode": bool(persistence) if persistence is not None else None,
            "memory_total_mib": mem.total / 2**20 if mem is not None else None,
        }


def open_gpus(count: int, nvml_module: Any = None) -> Tuple[List[GpuReader], List[str], Optional[str]]:
    """Readers for the first ``count`` visible GPUs, warnings, and why there are none (if so)."""
    nvml, reason = load_nvml(nvml_module)
    if nvml is None:
        return [], [], reason
    indices, warnings = visible_indices(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not indices:
        return [], warnings, "no GPU is visible (CUDA_VISIBLE_DEVICES)"
    if len(indices) < count:
        warnings.append(f"the engine needs {count} GPUs but {len(indices)} are visible")
    try:
        return [GpuReader(nvml, i) for i in indices[:count]], warnings, None
    except Exception as exc:  # a GPU NVML cannot open: measure no energy rather than fail the job
        return [], warnings, f"NVML could not open a GPU ({type(exc).__name__}: {exc})"


def gpu_counts(nvml_module: Any = None) -> Tuple[int, int]:
    """(GPUs CUDA will see, GPUs on the host), by NVML — no CUDA context is created."""
    nvml, _ = load_nvml(nvml_module)
    if nvml is None:
        return 0, 0
    return len(visible_indices(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))[0]), nvml.nvmlDeviceGetCount()


def visible_uuids(count: int, nvml_module: Any = None) -> List[str]:
    """UUIDs of the first ``count`` visible GPUs (what a job uses), or [] without NVML."""
    nvml, _ = load_nvml(nvml_module)
    if nvml is None:
        return []
    indices = visible_indices(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))[0][:count]
    out = []
    for i in indices:
        try:
            out.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))))
        except Exception:
            pass
    return out


def throttle_names(reasons: int) -> List[str]:
    return [name for bit, name in THROTTLE_BITS.items() if reasons & bit]
