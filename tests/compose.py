"""llem's config composed as a job receives it, cheaply enough for hundreds of tests.

Hydra composes a config in two steps: the defaults list (the config groups chosen: ``backend=vllm``, ``model=…``)
is read from YAML and merged, then the value overrides (``batch=8``, ``load.request_rate=inf``) are applied to the
result by ``ConfigLoaderImpl._apply_overrides_to_config``. The first step is most of the ~0.15 s a compose costs; it
depends on the group choices only. :class:`Composer` runs it once per distinct set of group choices and applies each
call's value overrides with Hydra's own function, so the config (and any error) is Hydra's. Anything else — a sweep,
a deletion, a package, a forced add, a ``hydra.`` key — goes through Hydra's compose whole.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig


class Composer:
    """``composer(overrides)`` → the DictConfig ``compose("config", overrides)`` gives, as a fresh copy."""

    def __init__(self, conf_dir: Path, config_name: str = "config") -> None:
        self.conf_dir, self.config_name = Path(conf_dir), config_name
        self.groups = {p.name for p in self.conf_dir.iterdir() if p.is_dir()}
        self.parser = OverridesParser.create()
        self.bases: Dict[Tuple[str, ...], DictConfig] = {}
        self.whole: Dict[Tuple[str, ...], DictConfig] = {}

    def __call__(self, overrides: Sequence[str] = ()) -> DictConfig:
        parsed = self.parser.parse_overrides(list(overrides))
        if not all(self._simple(o) for o in parsed):
            return copy.deepcopy(self._hydra(tuple(overrides), self.whole))
        groups = tuple(o.input_line for o in parsed if self._group(o))
        values = [o for o in parsed if not self._group(o)]
        cfg = copy.deepcopy(self._hydra(groups, self.bases))
        if values:
            from hydra._internal.config_loader_impl import ConfigLoaderImpl

            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def _group(self, override) -> bool:
        """A config-group choice, as Hydra's defaults list tells one from a value (a dict value is a value)."""
        key = override.key_or_group
        return (key in self.groups or key.startswith("hydra/")) and not isinstance(override.value(), dict)

    @staticmethod
    def _simple(override) -> bool:
        """Plain ``key=value`` or ``+key=value``: what the two steps compose exactly as Hydra does."""
        return not (override.is_sweep_override() or override.is_delete() or override.is_force_add()
                    or override.package is not None or override.key_or_group.split(".")[0] == "hydra")

    def _hydra(self, overrides: Tuple[str, ...], cache: Dict[Tuple[str, ...], DictConfig]) -> DictConfig:
        if overrides not in cache:
            GlobalHydra.instance().clear()
            with initialize_config_dir(str(self.conf_dir), version_base="1.3"):
                cache[overrides] = compose(self.config_name, overrides=list(overrides))
        return cache[overrides]

