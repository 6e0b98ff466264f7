"""``python -m llem --help``: the config groups a user chooses from, and the launchers and
sweepers, read from ``conf/`` (so the schema's ``base_*`` entries never show as options)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List

from llem.config import conf_dir
from llem.support.install import install_hint

GROUPS = ("backend", "model", "dataset", "server", "runtime")
# Hydra's own options worth listing beside llem's presets, and the plugin each needs.
HYDRA_OPTIONS = {
    "launcher": [("basic", "Hydra's: one job after another in this process (default)", None)],
    "sweeper": [],
}
PLUGINS = {"local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
           "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
           "energy_search": ("hydra_plugins.hydra_optuna_sweeper", "search")}


def _options(group: str) -> List[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").rstrip(":")
    return ""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def groups_text() -> str:
    """``group: option, option`` per config group."""
    return "\n".join(f"{group}: {', '.join(_options(group))}" for group in GROUPS)


def hydra_text() -> str:
    """The launchers and sweepers (``hydra/launcher=…``, ``hydra/sweeper=…``), each with one line."""
    lines = []
    for kind in ("launcher", "sweeper"):
        lines.append(f"hydra/{kind}:")
        for name, what, _ in HYDRA_OPTIONS[kind]:
            lines.append(f"  {name:<14} {what}")
        for name in _options(f"hydra/{kind}"):
            what = _first_comment(conf_dir() / "hydra" / kind / f"{name}.yaml")
            module, extra = PLUGINS.get(name, (None, None))
            if module and not _installed(module):
                what += f" [needs {install_hint(extra)}]"
            lines.append(f"  {name:<14} {what}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """llem's resolvers in conf/: this help's, and ``llem_job_dir`` (a sweep job's directory name)."""
    from omegaconf import OmegaConf

    from llem.config.dirnames import resolver

    for name, fn in (("llem_help_groups", groups_text), ("llem_help_hydra", hydra_text), ("llem_job_dir", resolver)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
