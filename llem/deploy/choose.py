"""Which place a job's engine runs in, decided once per job from its config (and, for a kept engine, the
sweep it is part of)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from llem.backends import engine_class
from llem.config import Config
from llem.deploy.base import Deployment, JobPlace
from llem.deploy.device import resolve_device
from llem.deploy.held import Held


def pick(place: JobPlace, held: Held) -> Deployment:
    """A container runtime: the engine's own server in its image (server=launch), else the measurement process
    in llem's image of it; server=launch or external: behind that server; else in this process (isolate=false),
    on a kept engine (a sweep's job whose engine can be kept, ``reuse_engine``), or in a process of its own."""
    from llem.deploy.kept import Kept
    from llem.deploy.local import Local, Spawned
    from llem.deploy.reuse import reuse_for
    from llem.deploy.servers import External, Launched

    config = place.config
    if place.refused is not None:
        from llem.deploy.auto import Refused

        return Refused(place, held)
    if config.runtime.in_container:
        from llem.deploy.container import InContainer
        from llem.deploy.container_server import ContainerServer

        return (ContainerServer if config.server.mode == "launch" else InContainer)(place, held)
    if config.server.mode == "launch":
        return Launched(place, held)
    if config.server.mode == "external":
        return External(place, held)
    if not config.isolate:
        return Local(place, held)
    reuse = reuse_for(config, place.device, list(place.overrides)) if place.sweep_dir is not None else None
    return Kept(place, held, reuse) if reuse is not None else Spawned(place, held)


def place_of(config: Config, job_dir: Path, sweep_dir: Optional[Path] = None,
             overrides: Tuple[str, ...] = ()) -> JobPlace:
    """The job's place: its device resolved without touching CUDA, ``runtime=auto`` resolved (the place's
    config and hash are the resolved ones), the GPUs its engine needs."""
    from llem.config import config_hash
    from llem.deploy.auto import choose

    device, problem = resolve_device(config)
    note = refused = None
    if config.runtime.name == "auto":
        choice = choose(config, device)
        if choice.config is None:
            refused = choice.reason
        else:
            config, note = choice.config, choice.reason
    gpus_needed = engine_class(config.backend.name).gpus_required(config.backend)
    return JobPlace(config, config_hash(config), job_dir, device, gpus_needed, sweep_dir, problem, tuple(overrides),
                    note, refused)
