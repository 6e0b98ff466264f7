"""Host energy (CPU and RAM) and CO2, through codecarbon (``energy.meters=[nvml,codecarbon]``).

codecarbon meters the CPU by RAPL where the powercap files are readable and otherwise falls back
to an estimate (its ``cpu_load`` mode: TDP × CPU load, or a constant TDP); RAM is always its
estimate from the installed memory size. The mode it chose is recorded (``cpu_energy_method``,
``ram_energy_method``) and an estimate raises the ``host_energy_estimated`` flag. How llem keeps
codecarbon honest:

- GPUs: ``gpu_ids=[]``, so codecarbon meters none; the GPUs are NVML's. Its GPU figure is
  checked to be 0 and never added.
- Network: the *offline* tracker, no API output; CO2 is computed here from codecarbon's bundled
  per-country carbon intensity (``energy.country_iso_code``; null: its world average).
- Files: no output methods (``output_methods=[]``), no lock file (``allow_multiple_runs``),
  ``output_dir`` = the job dir.
- Scope: ``tracking_mode="machine"``, so a data-parallel job's worker processes and an engine's
  own subprocesses are included — and so is anything else running on the host.

Each phase is one codecarbon task (``start_task``/``stop_task``, codecarbon 3.x), opened just
before the GPU window and closed just after it, so the GPU window's edges are not delayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from llem.energy.flags import Flag
from llem.results.row import CodecarbonFacts, HostEnergy
from llem.support.errors import ConfigError, MeterError
from llem.support.install import install_hint

log = logging.getLogger(__name__)

J_PER_KWH = 3.6e6
INSTALL_HINT = install_hint("energy")
COUNTER_MODES = ("intel_rapl", "windows_emi", "intel_power_gadget", "apple_powermetrics")


@dataclass
class HostReading:
    phase: str
    duration_s: Optional[float] = None
    cpu_energy_j: Optional[float] = None
    ram_energy_j: Optional[float] = None
    null_reason: Optional[str] = None
    warnings: List[str] = field(default_factory=list)


def co2_g(energy_j: Optional[float], intensity_g_per_kwh: Optional[float]) -> Optional[float]:
    """Grams of CO2-equivalent for ``energy_j`` at a carbon intensity in g/kWh (None if either is)."""
    if energy_j is None or intensity_g_per_kwh is None:
        return None
    return energy_j / J_PER_KWH * intensity_g_per_kwh


def carbon_intensity(country_iso_code: Optional[str]) -> tuple:
    """(g CO2e per kWh, where it comes from) from codecarbon's bundled data; no network."""
    from codecarbon.input import DataSource

    data = DataSource()
    if country_iso_code is None:
        return float(data.get_carbon_intensity_per_source_data()["world_average"]), "codecarbon world_average"
    mix = data.get_global_energy_mix_data()
    if country_iso_code not in mix:
        some = ", ".join(sorted(mix)[:8])
        raise ConfigError(f"energy.country_iso_code={country_iso_code!r} is invalid: allowed a 3-letter code in "
                          f"codecarbon's energy-mix data ({len(mix)} countries, e.g. {some}, FRA, USA) or null")
    entry = mix[country_iso_code]
    source = f"codecarbon global_energy_mix {country_iso_code} {entry.get('year', '')}".strip()
    return float(entry["carbon_intensity"]), source


class HostMeter:
    """codecarbon's offline tracker, one task per phase. Hardware detection (seconds) runs here, at
    construction, so that no phase pays for it."""

    def __init__(self, job_dir: Path, country_iso_code: Optional[str]) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError as exc:
            raise MeterError(f"energy.meters includes codecarbon, which is not installed: {INSTALL_HINT}") from exc
        self.carbon_intensity_g_per_kwh, self.carbon_intensity_source = carbon_intensity(country_iso_code)
        logging.getLogger("codecarbon").setLevel(logging.WARNING)
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code or "USA",  # codecarbon's own CO2 is unused; ours uses the key
            gpu_ids=[], tracking_mode="machine", allow_multiple_runs=True, output_dir=str(job_dir),
            output_methods=[], pue=1.0, log_level="warning", project_name="llem")
        self.tracker.start_task("llem_detect")
        if self.tracker.stop_task("llem_detect") is None:
            raise MeterError("codecarbon did not measure a test task (see its log above)")
        cpu = [h for h in self.tracker._hardware if type(h).__name__ == "CPU"]
        mode = getattr(cpu[0], "_mode", None) if cpu else None
        self.cpu_method = f"codecarbon_{mode}" if mode else "codecarbon_unknown"
        forced = getattr(self.tracker, "_force_ram_power", None)
        self.ram_method = "codecarbon_ram_forced_constant" if forced else "codecarbon_ram_size_estimate"
        self.cpu_measured = mode in COUNTER_MODES

    def start(self, phase: str) -> str:
        self.tracker.start_task(phase)
        return phase

    def stop(self, phase: str) -> HostReading:
        data = self.tracker.stop_task(phase)
        if data is None:
            return HostReading(phase, null_reason=f"codecarbon returned no measurement for {phase}")
        out = HostReading(phase, duration_s=float(data.duration), cpu_energy_j=float(data.cpu_energy) * J_PER_KWH,
                         ram_energy_j=float(data.ram_energy) * J_PER_KWH)
        if data.gpu_energy:
            out.warnings.append(f"codecarbon reported {data.gpu_energy * J_PER_KWH:.1f} J of GPU energy in {phase} "
                                "although it meters no GPU: ignored (NVML meters the GPUs)")
        return out

    def facts(self) -> Dict[str, Any]:
        conf = self.tracker._conf
        return {"version": conf.get("codecarbon_version"), "cpu_model": conf.get("cpu_model"),
                "ram_total_size_gb": conf.get("ram_total_size"), "tracking_mode": conf.get("tracking_mode"),
                "carbon_intensity_source": self.carbon_intensity_source}

    def close(self) -> None:
        self.tracker.stop()


class HostWindows:
    """The experiment's side: no-op unless codecarbon is in ``energy.meters``."""

    def __init__(self, meters: List[str], country_iso_code: Optional[str], job_dir: Path,
                 make_meter: Callable[..., Any] = HostMeter) -> None:
        self.meter = make_meter(job_dir, country_iso_code) if "codecarbon" in meters else None
        self.readings: Dict[str, HostReading] = {}
        self.warnings: List[str] = []

    def around(self, phase: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (which opens and closes the GPU window) inside a host window of ``phase``."""
        if self.meter is None:
            return fn()
        handle = self.meter.start(phase)
        out = fn()
        reading = self.meter.stop(handle)
        self.readings[phase] = reading
        self.warnings.extend(reading.warnings)
        return out

    def result(self, gpu_energy_j: Optional[float], gpu_used: bool) -> Tuple[HostEnergy, Optional[CodecarbonFacts]]:
        """The host columns: CPU and RAM energy of each metered phase, and the measured window's total
        (GPU raw + CPU + RAM) and CO2. A CPU-only job's GPU part is 0; a part that was used but not
        measured makes the total null."""
        if self.meter is None:
            return HostEnergy(), None
        empty = HostReading("none")
        measure, load, prefill = (self.readings.get(p, empty) for p in ("measure", "load", "prefill"))
        parts = [gpu_energy_j if gpu_used else 0.0, measure.cpu_energy_j, measure.ram_energy_j]
        total = None if any(p is None for p in parts) else float(sum(parts))
        intensity = self.meter.carbon_intensity_g_per_kwh
        host = HostEnergy(
            cpu_energy_j=measure.cpu_energy_j, ram_energy_j=measure.ram_energy_j,
            load_cpu_energy_j=load.cpu_energy_j, load_ram_energy_j=load.ram_energy_j,
            prefill_cpu_energy_j=prefill.cpu_energy_j, prefill_ram_energy_j=prefill.ram_energy_j,
            cpu_energy_method=self.meter.cpu_method, ram_energy_method=self.meter.ram_method,
            host_energy_null_reason=measure.null_reason if "measure" in self.readings else "no measured window",
            energy_total_j=total, carbon_intensity_g_per_kwh=intensity, co2_g=co2_g(total, intensity))
        return host, CodecarbonFacts(**self.meter.facts())

    def flags(self) -> List[Flag]:
        """``host_energy_estimated`` when the CPU energy is codecarbon's estimate, not a counter."""
        if self.meter is None or self.meter.cpu_measured:
            return []
        return [Flag("host_energy_estimated", f"CPU energy is codecarbon's estimate ({self.meter.cpu_method}), "
                     "not a counter: RAPL is not readable here")]

    def close(self) -> None:
        if self.meter is not None:
            try:
                self.meter.close()
            except Exception as exc:  # the job's numbers are already taken
                log.warning("codecarbon close: %s", exc)
