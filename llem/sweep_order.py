"""The order a sweep runs its jobs in (``sweep.order``, ``sweep.seed``): Hydra's grid, reordered by llem's sweeper
before it is batched, so that a job's dir name (from its overrides), resume and dry runs do not depend on it.

A sweep is seen as *cycles* of *configurations*: a job's cycle is its ``repeat`` override (cycles in the order
their values first appear in the grid), its configuration the rest of its overrides (in the order they first
appear). Without a swept ``repeat`` the sweep is one cycle:

- ``grid``: Hydra's order, unchanged (the last swept key varies fastest);
- ``interleaved``: cycle-major, every configuration once per cycle (``a0 b0 a1 b1``): slow drift lands on every
  configuration alike;
- ``grouped``: configuration-major, a configuration's cycles together (``a0 a1 b0 b1``): the fewest engine builds
  and server starts;
- ``shuffled``: every configuration once per cycle, in a permutation drawn per cycle from ``sweep.seed`` (the
  same seed, the same order: a rerun resumes in the order it ran).
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence

from llem.errors import ConfigError

CYCLE_KEY = "repeat"
LLEM_SWEEPER = "hydra_plugins.llem_sweeper.llem_sweeper.LlemSweeper"
SWEEP_KEYS = ("sweep.order", "sweep.seed")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def reorder(jobs: Sequence[Sequence[str]], order: str, seed: int = 0) -> List[List[str]]:
    """``jobs`` (each a job's overrides, in Hydra's grid order) in the run order ``order`` asks for."""
    jobs = [list(job) for job in jobs]
    _refuse_swept_order(jobs)
    if order == "grid":
        return jobs
    cycles: Dict[str, List[List[str]]] = {}
    configs: Dict[tuple, int] = {}
    for job in jobs:
        configs.setdefault(_config(job), len(configs))
        cycles.setdefault(_cycle(job), []).append(job)
    cycle_rank = {cycle: i for i, cycle in enumerate(cycles)}

    def config_rank(job: List[str]) -> int:
        return configs[_config(job)]

    if order == "grouped":
        return sorted(jobs, key=lambda job: (config_rank(job), cycle_rank[_cycle(job)]))
    rng = random.Random(seed)
    out: List[List[str]] = []
    for members in cycles.values():
        members = sorted(members, key=config_rank)
        if order == "shuffled":
            rng.shuffle(members)
        out.extend(members)
    return out


def _config(job: Sequence[str]) -> tuple:
    """A job's configuration: its overrides without the cycle's."""
    return tuple(o for o in job if _key(o) != CYCLE_KEY)


def _cycle(job: Sequence[str]) -> str:
    """A job's cycle: its ``repeat`` value ("" when it has none: one cycle)."""
    return next((o.split("=", 1)[1] for o in job if _key(o) == CYCLE_KEY and "=" in o), "")


def _refuse_swept_order(jobs: List[List[str]]) -> None:
    """The order is the sweep's, one for all its jobs: a swept ``sweep.order`` or ``sweep.seed`` is refused."""
    for key in SWEEP_KEYS:
        values = {o for job in jobs for o in job if _key(o) == key}
        if len(values) > 1:
            raise ConfigError(f"{key} is one setting for the whole sweep and cannot be swept (got "
                              f"{', '.join(sorted(values))}): run one sweep per order")


def check_sweeper(order: str, sweeper_target: Optional[str], multirun: bool) -> None:
    """Refuse an order other than ``grid`` under a sweeper that is not llem's (optuna's trials come in the order
    its sampler draws them; Hydra's basic sweeper knows nothing of ``sweep.order``): the row would claim an order
    the sweep did not run in."""
    if order == "grid" or not multirun or sweeper_target == LLEM_SWEEPER:
        return
    raise ConfigError(f"sweep.order={order} is applied by llem's sweeper (hydra/sweeper=serial, the default), not "
                      f"by {sweeper_target}: set sweep.order=grid, or use hydra/sweeper=serial")


def sweeper_of(hydra_cfg: Any) -> Optional[str]:
    """The sweeper's class path in a job's Hydra config (None when it has none)."""
    try:
        return str(hydra_cfg.sweeper._target_)
    except Exception:
        return None
