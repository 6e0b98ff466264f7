"""Host energy and CO2 through codecarbon: config checks, the column logic (with a stand-in meter),
and the real codecarbon tracker with the network cut off and HOME and the working dir in a temp dir."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from llem.config import to_config
from llem.energy.codecarbon import J_PER_KWH, HostMeter, HostReading, HostWindows, carbon_intensity
from llem.support.errors import ConfigError, MeterError


@pytest.mark.parametrize("override,key", [
    ("energy.meters=[nvml,rapl]", "energy.meters"),
    ("energy.meters=[codecarbon]", "energy.meters"),
    ("energy.meters=[nvml,nvml]", "energy.meters"),
    ("energy.country_iso_code=fr", "energy.country_iso_code"),
    ("energy.country_iso_code=FRANCE", "energy.country_iso_code"),
])
def test_bad_energy_keys_are_named(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg([override]))


def test_energy_keys_default_and_accept(compose_cfg):
    assert to_config(compose_cfg([])).energy.meters == ["nvml"]
    cfg = to_config(compose_cfg(["energy.meters=[nvml,codecarbon]", "energy.country_iso_code=DEU"]))
    assert cfg.energy.meters == ["nvml", "codecarbon"] and cfg.energy.country_iso_code == "DEU"


class StandIn:
    """A meter that returns set energies: tests the column logic only."""

    carbon_intensity_g_per_kwh = 400.0
    cpu_method, ram_method, cpu_measured = "codecarbon_intel_rapl", "codecarbon_ram_size_estimate", True

    def __init__(self, job_dir, country):
        self.energies = {"load": (10.0, 2.0), "measure": (36.0, 3.6), "prefill": (None, 1.0)}

    def start(self, phase):
        return phase

    def stop(self, phase):
        cpu, ram = self.energies[phase]
        return HostReading(phase, 1.0, cpu, ram, None if cpu is not None else "none read")

    def facts(self):
        return {"version": "x"}

    def close(self):
        pass


def test_windows_prefix_columns_and_sum_the_measured_window():
    gpu_j = 3600.0 - 39.6
    host = HostWindows(["nvml", "codecarbon"], None, Path("."), make_meter=StandIn)
    assert host.around("load", lambda: "loaded") == "loaded"
    host.around("measure", lambda: None)
    host.around("prefill", lambda: None)
    out, facts = host.result(gpu_j, gpu_used=True)
    assert out.load_cpu_energy_j == 10.0 and out.cpu_energy_j == 36.0 and out.prefill_ram_energy_j == 1.0
    assert out.prefill_cpu_energy_j is None and out.cpu_energy_method == "codecarbon_intel_rapl"
    assert host.flags() == []  # RAPL: a counter
    assert out.energy_total_j == pytest.approx(3600.0)
    assert out.co2_g == pytest.approx(3600.0 / J_PER_KWH * 400.0) and facts.version == "x"
    assert host.result(gpu_j, gpu_used=False)[0].energy_total_j == pytest.approx(39.6)  # CPU-only: GPU counts 0
    assert host.result(None, gpu_used=True)[0].co2_g is None  # a used part unmeasured


def test_windows_are_a_no_op_without_codecarbon():
    host = HostWindows(["nvml"], None, Path("."), make_meter=lambda *a: pytest.fail("meter opened"))
    assert host.around("measure", lambda: 7) == 7
    out, facts = host.result(1.0, True)
    assert facts is None and all(v is None for v in vars(out).values())
    assert host.flags() == []


def test_missing_codecarbon_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(MeterError, match=r"pip install \"\.\[energy\]\""):
        HostMeter(tmp_path, None)


codecarbon = pytest.importorskip("codecarbon")


def test_intensity_comes_from_codecarbons_offline_data():
    from codecarbon.input import DataSource

    fra, source = carbon_intensity("FRA")
    assert fra == DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"] and "FRA" in source
    world, source = carbon_intensity(None)
    assert world == DataSource().get_carbon_intensity_per_source_data()["world_average"] and "world" in source
    with pytest.raises(ConfigError, match=r"energy\.country_iso_code='XXX'"):
        carbon_intensity("XXX")


@pytest.fixture
def sealed(tmp_path, monkeypatch):
    """No network (any connect fails loudly), HOME and the working dir inside tmp_path."""
    calls = []

    def refuse(sock, address):
        calls.append(address)
        raise OSError(f"network use in a test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    return calls


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_real_tracker_measures_cpu_and_ram_offline_writing_nothing(tmp_path, sealed):
    job = tmp_path / "job"
    job.mkdir()
    from codecarbon.lock import LOCKFILE

    lock = Path(LOCKFILE)
    had_lock = lock.exists()
    meter = HostMeter(job, "FRA")
    try:
        phase = meter.start("measure")
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            sum(range(1000))
        energy = meter.stop(phase)
    finally:
        meter.close()
    assert energy.null_reason is None and energy.duration_s >= 0.5
    assert energy.cpu_energy_j > 0 and energy.ram_energy_j > 0
    assert not energy.warnings  # codecarbon metered no GPU
    assert meter.cpu_method.startswith("codecarbon_") and meter.cpu_method != "codecarbon_unknown"
    assert sealed == [] and _files(tmp_path) == [] and lock.exists() is had_lock


def test_an_estimated_cpu_raises_the_flag():
    class Estimated(StandIn):
        cpu_method, cpu_measured = "codecarbon_cpu_load", False

    flags = HostWindows(["nvml", "codecarbon"], None, Path("."), make_meter=Estimated).flags()
    assert [f.code for f in flags] == ["host_energy_estimated"] and "codecarbon_cpu_load" in flags[0].message
