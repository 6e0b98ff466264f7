"""The engine's import, before its load: run by the measurement process as it starts, beside the parent's
device-idle floor (``Engine.preload`` touches no device), so that start-up and floor overlap."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

from llem.backends import engine_class
from llem.config import Config
from llem.measure import compile_cache

log = logging.getLogger(__name__)


def preload_engine(config: Config, device: str) -> Optional[float]:
    """Point the engine's compile caches under ``cache_dir`` and import its libraries (``Engine.preload``);
    the seconds it took, or None when it failed (``load`` then imports again and fails with the reason)."""
    engine_cls = engine_class(config.backend.name)
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's order = NVML's order
    t0 = time.perf_counter()
    try:
        compile_cache.apply(engine_cls(config, device).compile_cache(Path(config.cache_dir).expanduser()))
        engine_cls.preload()
    except Exception as exc:
        log.warning("importing backend=%s's libraries failed (%s: %s): its load will say why", config.backend.name,
                    type(exc).__name__, exc)
        return None
    return time.perf_counter() - t0
