"""The job's device, decided without touching CUDA (NVML says which GPUs are visible), and the check of it
that every place runs first."""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from llem.backends import engine_class
from llem.config import Config
from llem.energy.nvml import gpu_counts
from llem.support.errors import DeviceError


def resolve_device(config: Config) -> Tuple[str, Optional[str]]:
    """(cpu or cuda, a problem) decided without touching CUDA: NVML tells which GPUs are visible.

    device=cuda with no visible GPU is a problem (the job refuses to measure); device=auto then
    measures on the CPU, with a warning when the host has GPUs that were hidden from the job.
    """
    from llem.config import Device

    visible, total = gpu_counts()
    hidden = (f"none of the host's {total} GPU(s) is visible to this job (CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}; under submitit set hydra.launcher.gpus_per_node)")
    if config.device == Device.cuda:
        return "cuda", None if visible else f"device=cuda was asked for, but {hidden if total else 'no GPU is visible'}"
    if config.device == Device.auto:
        if visible:
            return "cuda", None
        return "cpu", (f"device=auto measures on the CPU: {hidden}" if total else None)
    return "cpu", None


def check_gpus(config: Config, device: str) -> None:
    """The engine's GPU count against the GPUs this job can see (any engine), before anything runs."""
    if device != "cuda":
        return
    needed = engine_class(config.backend.name).gpus_required(config.backend)
    visible = gpu_counts()[0]
    if visible < needed:
        raise DeviceError(f"backend={config.backend.name} needs {needed} GPUs for this config, but {visible} are "
                          "visible to this job (CUDA_VISIBLE_DEVICES, or hydra.launcher.gpus_per_node under submitit)")


def check_device(place: Any) -> None:
    """A device problem refuses a job on cuda (a warning on the CPU), then the GPU count."""
    if place.device == "cuda" and place.problem:
        raise DeviceError(place.problem)
    check_gpus(place.config, place.device)
