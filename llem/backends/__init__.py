"""Engines: one module per engine, found by name; nothing here knows a concrete engine."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, List, Type

from llem.errors import ConfigError


def engine_names() -> List[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_"))


def engine_class(name: str) -> Type:
    """The Engine subclass of ``llem.backends.<name>`` (cheap: engines import lazily)."""
    if name not in engine_names():
        raise ConfigError(f"backend.name={name!r} is invalid: allowed {', '.join(engine_names())}")
    return importlib.import_module(f"{__name__}.{name}").ENGINE


def gpus_resolver(*, _root_: Any) -> int:
    """``${llem_gpus:}``: the GPUs one job of the selected engine needs (sizes launcher tasks)."""
    if "backend" not in _root_:  # the hydra node printed on its own (--cfg hydra)
        return 1
    backend = _root_.backend
    return int(engine_class(backend.name).gpus_required(backend))


def register_all() -> None:
    """Register the whole schema in Hydra's ConfigStore: llem's own keys, then every engine's config
    dataclass as ``backend/base_<name>`` (the config schema itself knows no engine)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from llem.config import register_configs

    register_configs()
    if not OmegaConf.has_resolver("llem_gpus"):
        OmegaConf.register_new_resolver("llem_gpus", gpus_resolver)
    cs = ConfigStore.instance()
    for name in engine_names():
        cs.store(group="backend", name=f"base_{name}", node=engine_class(name).config_class)
