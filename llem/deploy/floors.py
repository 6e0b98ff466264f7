"""Which device-idle floor a job uses: metered now (and kept for the sweep's later jobs), reused from an
earlier job of the sweep while recent and clean, or, on a kept engine or a reused server that holds the GPUs,
the one the sweep metered before it started. ``sweep`` is the sweep dir, or None for a single run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from llem.config import Config
from llem.energy.idle import DeviceIdle, device_idle_baseline, remember_device_idle, reuse_device_idle
from llem.energy.nvml import visible_uuids

log = logging.getLogger(__name__)


def for_job(config: Config, gpus_needed: int, job_dir: Path, sweep: Optional[Path]) -> DeviceIdle:
    """The device-idle floor: reused from an earlier job of this sweep on the same GPUs while recent
    (baseline.device_idle_reuse_s), else metered now and kept for the jobs after this one. A job with
    ``cold_start`` meters its own (and leaves it to the jobs after it)."""
    uuids = visible_uuids(gpus_needed)
    reuse_s = config.baseline.device_idle_reuse_s
    if sweep is not None and not config.cold_start:
        idle = reuse_device_idle(sweep, uuids, reuse_s)
        if idle is not None:
            return idle
    log.info("device-idle baseline: %.1f s settle, %.1f s metered", config.baseline.settle_s,
             config.baseline.device_idle_s)
    idle = device_idle_baseline(config, gpus_needed)
    if sweep is not None and reuse_s > 0:
        from llem.energy.flags import baseline_flags

        unclean = bool(idle.warnings) or bool(baseline_flags("device_idle", idle.rows))
        remember_device_idle(sweep, uuids, idle, job_dir.name, unclean)
    return idle


def for_kept(config: Config, gpus_needed: int, device: str, sweep: Optional[Path]) -> Optional[DeviceIdle]:
    """The device-idle floor for a job on the kept engine: the one the sweep metered before it was built, while
    younger than baseline.device_idle_reuse_s and clean; None when it is not (the kept engine is then closed,
    the floor metered again and the engine rebuilt)."""
    if device != "cuda" or config.baseline.device_idle_s <= 0:
        return DeviceIdle()
    idle = reuse_device_idle(sweep, visible_uuids(gpus_needed), config.baseline.device_idle_reuse_s) if sweep else None
    if idle is None:
        log.info("the device-idle floor is older than baseline.device_idle_reuse_s=%g s (or was not clean): the "
                 "kept engine is closed and the floor metered again", config.baseline.device_idle_reuse_s)
    return idle


def for_server(gpus_needed: int, sweep: Optional[Path]) -> DeviceIdle:
    """A reused server holds the GPUs: the device-idle floor is the one the sweep took before it started,
    whatever its age (the row says how old), else none."""
    idle = reuse_device_idle(sweep, visible_uuids(gpus_needed), float("inf")) if sweep is not None else None
    if idle is None:
        idle = DeviceIdle(warnings=["no device-idle baseline: the server kept running since an earlier job, and no "
                                    "floor was taken before it started"])
    return idle
