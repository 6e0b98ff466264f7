"""The optional host meter (codecarbon: CPU and RAM energy, CO2), opened around the same phases
as the GPU windows, just outside them, so the GPU window's edges are not delayed by it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

from llem.config import Config


class HostWindows:
    """The optional codecarbon meter (host CPU and RAM), opened around the same phases as NVML's
    windows, just outside them; a no-op unless ``codecarbon`` is in ``energy.meters``."""

    def __init__(self, config: Config, job_dir: Path) -> None:
        self.meter = None
        self.warnings: List[str] = []
        if "codecarbon" in config.energy.meters:
            from llem.energy.codecarbon import HostMeter

            self.meter = HostMeter(job_dir, config.energy.country_iso_code)

    def start(self, phase: str) -> Any:
        return self.meter.start(phase) if self.meter is not None else None

    def stop(self, handle: Any, prefix: str, row: Dict[str, Any]) -> None:
        if self.meter is None:
            return
        e = self.meter.stop(handle)
        row.update({f"{prefix}cpu_energy_j": e.cpu_energy_j, f"{prefix}ram_energy_j": e.ram_energy_j})
        if not prefix:
            row.update(cpu_energy_method=e.cpu_method, ram_energy_method=e.ram_method,
                       host_energy_null_reason=e.null_reason)
            self.warnings.extend(e.warnings)

    def around(self, phase: str, row: Dict[str, Any], fn: Callable[[], Any]) -> Any:
        handle = self.start(phase)
        out = fn()
        self.stop(handle, f"{phase}_", row)
        return out

    def carbon(self, row: Dict[str, Any], gpu_used: bool) -> Dict[str, Any]:
        """CO2 of the measured window: (GPU raw + CPU + RAM energy) × the offline carbon intensity.
        Null when a part that was used could not be measured (a CPU-only job has no GPU part)."""
        if self.meter is None:
            return {}
        from llem.energy.codecarbon import co2_g

        gpu = row.get("gpu_energy_j") if gpu_used else 0.0
        parts = [gpu, row.get("cpu_energy_j"), row.get("ram_energy_j")]
        total = None if any(p is None for p in parts) else float(sum(parts))
        intensity = self.meter.carbon_intensity_g_per_kwh
        return {"energy_total_j": total, "carbon_intensity_g_per_kwh": intensity, "co2_g": co2_g(total, intensity),
                **{f"codecarbon.{k}": v for k, v in self.meter.facts().items()}}

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()
