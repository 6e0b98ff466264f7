"""A fake ``pynvml`` that replays a real H100 NVML trace, driven by an injectable clock.

Every device read returns the trace row whose ``t_s`` is the last one at or before the
clock's current time (the first row before the trace starts). Each fake GPU replays the same
trace, optionally time-shifted and scaled, and can lack the energy counter, the instant-power
field or the averaged power, carry a large counter offset, have its counter reset at a
given time (as after a driver reload), report MIG or persistence mode, or freeze all its
readings over a span of time (a stale readout). Calls that name a device are counted per GPU.

The trace is read by tests/nvml_trace.py.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# NVML constants llem (or a caller) passes in.
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY_TOTAL_BYTES = 81559 * 2**20
H100_POWER_LIMIT_MW = 700_000


class NVMLError(Exception):
    """Base of the fake's errors, like ``pynvml.NVMLError``."""

    value = 999

    def __str__(self) -> str:
        return type(self).__name__


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
    value = NVML_ERROR_NOT_SUPPORTED


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    value = 2


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    value = 9


# ---------------------------------------------------------------------------------------
# clock


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t

    def set(self, t: float) -> float:
        self.t = float(t)
        return self.t


# ---------------------------------------------------------------------------------------
# the fake module


class _Obj:
    """A plain attribute bag, standing in for pynvml's ctypes structures."""

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return f"_Obj({self.__dict__})"


@dataclass
class FakeGpu:
    """One fake device: how it replays the trace and what it supports."""

    uuid: str
    shift_s: float = 0.0  # the GPU at clock time t shows the trace at t - shift_s
    scale: float = 1.0  # energy and power are multiplied by this
    has_counter: bool = True
    has_instant: bool = True
    has_average: bool = True
    counter_offset: int = 0
    counter_reset_at: Optional[float] = None  # clock time after which the counter restarts near 0
    pids: List[int] = field(default_factory=list)
    throttle_extra: List[Tuple[float, float, int]] = field(default_factory=list)  # (t0, t1, bits) ORed in
    name: str = H100_NAME
    mig_mode: int = 0  # NVML_DEVICE_MIG_DISABLE / _ENABLE
    persistence_mode: int = 1  # NVML_FEATURE_ENABLED
    stale: Optional[Tuple[float, float]] = None  # clock span over which every reading repeats the span's start


def _per_gpu(method):
    """Count a call that names a device, per GPU index (``FakeNVML.calls_by_gpu``)."""

    @functools.wraps(method)
    def counted(self, handle, *args, **kwargs):
        if isinstance(handle, _Handle) and handle.owner is self:
            calls = self.calls_by_gpu.setdefault(handle.index, {})
            calls[method.__name__] = calls.get(method.__name__, 0) + 1
        return method(self, handle, *args, **kwargs)

    return counted


class FakeNVML:
    """Instances quack like the ``pynvml`` module for every function llem calls."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT
    NVML_FI_DEV_POWER_AVERAGE = NVML_FI_DEV_POWER_AVERAGE
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM

    def __init__(
        self,
        trace: Optional[Sequence[Dict[str, object]]],
        clock: FakeClock,
        n_gpus: int = 1,
        *,
        uuids: Optional[Sequence[str]] = None,
        shifts: Optional[Sequence[float]] = None,
        scales: Optional[Sequence[float]] = None,
        has_counter: bool = True,
        has_instant: bool = True,
        has_average: bool = True,
        counter_offset: int = 0,
        counter_reset_at: Optional[float] = None,
        pids: Sequence[int] = (),
        throttle_extra: Sequence[Tuple[float, float, int]] = (),
        gpus: Optional[Sequence[FakeGpu]] = None,
        init_error: Optional[Exception] = None,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
    ) -> None:
        self.trace = list(trace or [])  # no trace: a device whose every reading is NotSupported
        self._times = [float(r["t_s"]) for r in self.trace]
        self.clock = clock
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.initialised = False
        self.calls: Dict[str, int] = {}
        self.calls_by_gpu: Dict[int, Dict[str, int]] = {}  # GPU index → device function → calls
        if gpus is not None:
            self.gpus = list(gpus)
        else:
            uuids = list(uuids) if uuids is not None else [default_uuid(i) for i in range(n_gpus)]
            assert len(uuids) == n_gpus, "one UUID per GPU"
            self.gpus = [
                FakeGpu(
                    uuid=uuids[i],
                    shift_s=shifts[i] if shifts else 0.0,
                    scale=scales[i] if scales else 1.0,
                    has_counter=has_counter,
                    has_instant=has_instant,
                    has_average=has_average,
                    counter_offset=counter_offset,
                    counter_reset_at=counter_reset_at,
                    pids=list(pids),
                    throttle_extra=list(throttle_extra),
                )
                for i in range(n_gpus)
            ]

    # -- helpers ------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def row_at(self, t: float) -> Dict[str, object]:
        """The last trace row at or before trace time ``t`` (the first row before the trace)."""
        i = bisect.bisect_right(self._times, t) - 1
        return self.trace[max(i, 0)]

    def _gpu(self, handle: _Handle) -> FakeGpu:
        if not isinstance(handle, _Handle) or handle.owner is not self:
            raise NVMLError_InvalidArgument()
        return self.gpus[handle.index]

    @staticmethod
    def _trace_time(gpu: FakeGpu, t: float) -> float:
        """The trace time GPU ``gpu`` shows at clock time ``t`` (held at the span's start while stale)."""
        if gpu.stale is not None and gpu.stale[0] <= t <= gpu.stale[1]:
            t = gpu.stale[0]
        return t - gpu.shift_s

    def _row(self, handle: _Handle) -> Tuple[FakeGpu, Dict[str, object]]:
        if not self.initialised:
            raise NVMLError("Uninitialized")
        gpu = self._gpu(handle)
        if not self.trace:
            raise NVMLError_NotSupported()
        return gpu, self.row_at(self._trace_time(gpu, self.clock.now()))

    def _scaled(self, gpu: FakeGpu, mw: object) -> int:
        return int(round(int(mw) * gpu.scale))

    def counter_mj(self, index: int, t: float) -> int:
        """What GPU ``index`` reports as its energy counter at clock time ``t``."""
        gpu = self.gpus[index]
        raw = self._scaled(gpu, self.row_at(self._trace_time(gpu, t))["energy_counter_mj"])
        if gpu.counter_reset_at is not None and t >= gpu.counter_reset_at:
            at_reset = self._scaled(gpu, self.row_at(gpu.counter_reset_at - gpu.shift_s)["energy_counter_mj"])
            return raw - at_reset  # restarts from 0, no offset: a reloaded driver
        return gpu.counter_offset + raw

    # -- system -------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        if not self.initialised:
            raise NVMLError("Uninitialized")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return _Handle(self, index)

    # -- identity and facts -------------------------------------------------------------

    @_per_gpu
    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle).uuid

    @_per_gpu
    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    @_per_gpu
    def nvmlDeviceGetPowerManagementLimit(self, handle: _Handle) -> int:
        return self._scaled(self._gpu(handle), H100_POWER_LIMIT_MW)

    @_per_gpu
    def nvmlDeviceGetMigMode(self, handle: _Handle) -> Tuple[int, int]:
        gpu = self._gpu(handle)
        return (gpu.mig_mode, gpu.mig_mode)  # (current, pending)

    @_per_gpu
    def nvmlDeviceGetPersistenceMode(self, handle: _Handle) -> int:
        return self._gpu(handle).persistence_mode

    @_per_gpu
    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> List[_Obj]:
        gpu, row = self._row(handle)
        return [_Obj(pid=pid, usedGpuMemory=int(row["memory_used_mb"]) * 2**20) for pid in gpu.pids]

    # -- readings -----------------------------------------------------------------------

    @_per_gpu
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        gpu, _ = self._row(handle)
        if not gpu.has_counter:
            raise NVMLError_NotSupported()
        return self.counter_mj(handle.index, self.clock.now())

    @_per_gpu
    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: Sequence[object]) -> List[_Obj]:
        gpu, row = self._row(handle)
        out = []
        for fid in field_ids:
            fid = fid[0] if isinstance(fid, (tuple, list)) else fid
            if fid == NVML_FI_DEV_POWER_INSTANT and gpu.has_instant:
                ret, val = NVML_SUCCESS, self._scaled(gpu, row["power_instant_field_mw"])
            elif fid == NVML_FI_DEV_POWER_AVERAGE and gpu.has_average:
                ret, val = NVML_SUCCESS, self._scaled(gpu, row["power_average_field_mw"])
            else:
                ret, val = NVML_ERROR_NOT_SUPPORTED, 0
            out.append(_Obj(fieldId=fid, nvmlReturn=ret, value=_Obj(uiVal=val, ullVal=val)))
        return out

    @_per_gpu
    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu, row = self._row(handle)
        if not gpu.has_average:
            raise NVMLError_NotSupported()
        return self._scaled(gpu, row["power_usage_mw"])

    @_per_gpu
    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        _, row = self._row(handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError_NotSupported()
        return int(row["temperature_c"])

    @_per_gpu
    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:
        _, row = self._row(handle)
        if clock_type in (NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM):
            return int(row["sm_clock_mhz"])
        if clock_type == NVML_CLOCK_MEM:
            return int(row["mem_clock_mhz"])
        raise NVMLError_InvalidArgument()

    @_per_gpu
    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Obj:
        _, row = self._row(handle)
        return _Obj(gpu=int(row["gpu_util_pct"]), memory=int(row["mem_util_pct"]))

    @_per_gpu
    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Obj:
        _, row = self._row(handle)
        used = int(row["memory_used_mb"]) * 2**20
        return _Obj(total=H100_MEMORY_TOTAL_BYTES, used=used, free=H100_MEMORY_TOTAL_BYTES - used)

    @_per_gpu
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        gpu, row = self._row(handle)
        bits = int(row["throttle_reasons"])
        now = self.clock.now()
        for t0, t1, extra in gpu.throttle_extra:
            if t0 <= now <= t1:
                bits |= extra
        return bits

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons  # the older name


class _Handle:
    def __init__(self, owner: FakeNVML, index: int) -> None:
        self.owner = owner
        self.index = index

    def __repr__(self) -> str:
        return f"<fake nvmlDevice {self.index}>"


def default_uuid(i: int) -> str:
    return f"GPU-{0xA1B2C3D4 + i * 0x1111:08x}-5e6f-7a8b-9c0d-{i:012x}"
