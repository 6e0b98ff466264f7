"""Engines: one module per engine, found by name; nothing here knows a concrete engine."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, List, Optional, Type

from llem.support.errors import ConfigError


def engine_names() -> List[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_"))


def engine_class(name: str) -> Type:
    """The Engine subclass of ``llem.backends.<name>`` (cheap: engines import lazily)."""
    if name not in engine_names():
        raise ConfigError(f"backend.name={name!r} is invalid: allowed {', '.join(engine_names())}")
    return importlib.import_module(f"{__name__}.{name}").ENGINE


def gpus_resolver(launcher: str = "local", *, _root_: Any) -> Optional[int]:
    """``${llem_gpus:local}``, ``${llem_gpus:slurm}``: the GPUs one job asks its launcher for. The engine's
    count (``Engine.gpus_required``), but none for a job on the CPU: device=cpu, or (SLURM) device=auto on
    a partition whose nodes have no GPU — submitit's local executor takes 0 (it hides every GPU), sbatch
    no request at all (a GPU asked of a node without one is refused)."""
    if launcher not in ("local", "slurm"):
        raise ValueError(f"llem_gpus: launcher {launcher!r} is not one of local, slurm")
    if "backend" not in _root_:  # the hydra node printed on its own (--cfg hydra)
        return 1
    backend = _root_.backend
    needed = int(engine_class(backend.name).gpus_required(backend))
    device = getattr(_root_.get("device"), "name", str(_root_.get("device")))
    if device == "cpu":
        return 0 if launcher == "local" else None
    if launcher == "slurm" and device == "auto":
        from llem.support.slurm import partition_has_gpus

        if partition_has_gpus(_root_) is False:
            return None
    return needed


def _fit_resolver(key: str, preset: Any, *, _root_: Any) -> Any:
    """``${llem_fit:cpus_per_task,8}``: a SLURM request that fits the partition's nodes (llem.support.slurm)."""
    from llem.support.slurm import fit_resolver

    return fit_resolver(key, preset, _root_=_root_)


def register_all() -> None:
    """Register the whole schema in Hydra's ConfigStore: llem's own keys, then every engine's config
    dataclass as ``backend/base_<name>`` (the config schema itself knows no engine)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from llem.config import register_configs

    register_configs()
    if not OmegaConf.has_resolver("llem_gpus"):
        OmegaConf.register_new_resolver("llem_gpus", gpus_resolver)
    if not OmegaConf.has_resolver("llem_fit"):
        OmegaConf.register_new_resolver("llem_fit", _fit_resolver)
    if not OmegaConf.has_resolver("llem_version"):  # the tag of llem's own images (docker/compose.yaml)
        from llem import __version__

        OmegaConf.register_new_resolver("llem_version", lambda: __version__)
    cs = ConfigStore.instance()
    for name in engine_names():
        cs.store(group="backend", name=f"base_{name}", node=engine_class(name).config_class)
