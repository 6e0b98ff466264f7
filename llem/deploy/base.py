"""Where a job's engine runs, as one interface: a :class:`Deployment` per place, picked once per job.

The places: in this process (``isolate=false``), a spawned measurement process, the engine a previous job
left loaded (``reuse_engine``), behind a server llem launches (``server=launch``), behind a server already
running (``server=external``). The job (llem.run.job) does not know which: it checks, starts, measures and
finishes, in that order, and every place keeps the same rules:

- ``check`` runs before anything is written or started (a dry run runs it too): the device and GPU count,
  then what the place needs (the engine's packages and the model's weights, or an external server answering);
- ``start`` stops the residents this job cannot use, then does what comes before the window in the right
  order: the measurement process spawned ahead (it imports its engine while the floor is metered), the
  device-idle floor taken with no CUDA context on the job's GPUs, a server started after that floor;
  it returns the job's :class:`~llem.energy.idle.DeviceIdle` (raises :class:`StartFailed` when it cannot);
- ``measure`` returns the row's values (a measurement process that died: a failed row, as every failure);
- ``finish`` runs whatever happened: the server's log lines into the job dir, and a single run (no sweep)
  stops what it started.

What outlives a job is not the deployment's: it lives in the driver's :class:`~llem.deploy.held.Held`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from llem.config import Config
from llem.deploy.held import Held
from llem.energy.idle import DeviceIdle
from llem.results.row import Stage


@dataclass(frozen=True)
class JobPlace:
    """One job as every deployment sees it: its typed config, where it writes, what it runs on."""

    config: Config
    chash: str
    job_dir: Path
    device: str  # cpu | cuda
    gpus_needed: int  # of the visible GPUs, the engine's count for this config
    sweep_dir: Optional[Path] = None  # the sweep's dir (its jobs share floors and residents); None: a single run
    problem: Optional[str] = None  # what resolving the device found (refused on cuda, a row warning otherwise)
    overrides: Tuple[str, ...] = field(default=())  # the job's overrides in its sweep (sizes a kept build)
    runtime_note: Optional[str] = None  # why runtime=auto chose the runtime in ``config`` (a row warning)
    refused: Optional[str] = None  # why no runtime fits (runtime=auto found none): the job fails at its check

    def gpus(self) -> List[str]:
        """The UUIDs of the GPUs this job uses (none on the CPU)."""
        from llem.energy.nvml import visible_uuids

        return visible_uuids(self.gpus_needed) if self.device == "cuda" else []


class StartFailed(Exception):
    """What comes before the window could not be started (a server that did not come up): a failed row."""

    def __init__(self, error: str, error_type: str, stage: Stage = Stage.load) -> None:
        super().__init__(error)
        self.error, self.error_type, self.stage = error, error_type, stage


class Deployment(ABC):
    """One place a job's engine runs, for one job; what outlives the job is in ``held``.

    ``start`` sets :attr:`started_cold`: True when nothing an earlier job left serves this one (its engine built,
    its server or container started for it), False when it measures on a resident it found, None when that is not
    llem's to know (an external server) or the job ended before its start."""

    started_cold: Optional[bool] = None

    def __init__(self, place: JobPlace, held: Held) -> None:
        self.place, self.held = place, held

    def check(self) -> None:
        """The check stage: the device and the GPUs, then what this place needs (raises a LlemError)."""
        from llem.deploy.device import check_device

        check_device(self.place)
        self.check_needs()

    @abstractmethod
    def check_needs(self) -> None:
        """What this place needs to run the job: packages and weights, or a server answering."""

    @abstractmethod
    def start(self) -> DeviceIdle:
        """Everything before the measurement, in order; the job's device-idle floor (StartFailed if not)."""

    @abstractmethod
    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        """Run the measurement; the row's values (a failed row when it failed)."""

    def finish(self) -> None:
        """After the job, whatever happened: a single run stops what it started."""
        if self.place.sweep_dir is None:
            self.held.release()

    def device_idle(self) -> DeviceIdle:
        """The device-idle floor, taken now (or reused from the sweep while recent): call it with no CUDA
        context on the job's GPUs. Nothing on the CPU, or with ``baseline.device_idle_s=0``."""
        cfg = self.place.config  # cold_start: metered anew (llem.deploy.floors)
        if self.place.device != "cuda" or cfg.baseline.device_idle_s <= 0:
            return DeviceIdle()
        from llem.deploy import floors

        return floors.for_job(cfg, self.place.gpus_needed, self.place.job_dir, self.place.sweep_dir)
