"""The value a job returns to its sweeper: the objective metric, or the worst value when the job failed,
the metric is null or a bound of objective.bounds is broken (the rule in docs/sweeps.md)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from llem.config import Config, breaks_bound, parse_bound

log = logging.getLogger(__name__)


def _sweeper_optimises() -> bool:
    """Whether this run's sweeper reads the value a job returns (Optuna does; Hydra's grid and llem's
    serial sweeper ignore it), so that the objective is logged only where it matters."""
    from hydra.core.hydra_config import HydraConfig

    try:
        target = str(HydraConfig.get().sweeper.get("_target_") or "")
    except Exception:  # no Hydra context (a direct call): nothing reads the value
        return False
    return "optuna" in target.lower()


def objective(row: Dict[str, Any], config: Optional[Config]) -> float:
    """The value a sweeper optimises: the objective metric, or the worst value (never 0) when the
    job failed, the metric is null, or a bound is broken. Logged at info only for a sweeper that
    optimises it (debug otherwise: a plain run has no use for it)."""
    level = logging.INFO if _sweeper_optimises() else logging.DEBUG
    metric = config.objective.metric if config else "j_per_output_token"
    minimize = config is None or config.objective.direction == "minimize"
    worst = float("inf") if minimize else float("-inf")
    if row.get("status") != "ok":
        log.log(level, "objective %s: job failed → %s", metric, worst)
        return worst
    value = row.get(metric)
    if value is None or value != value:
        log.log(level, "objective %s is null (%s) → %s", metric, row.get("energy_null_reason") or "not measured", worst)
        return worst
    for column, bound in (config.objective.bounds.items() if config else ()):
        seen = row.get(column)
        if breaks_bound(seen, *parse_bound(bound)):
            log.log(logging.WARNING if level == logging.INFO else level, "objective: %s=%s breaks the bound %s → %s",
                    column, seen, bound, worst)
            return worst
    return float(value)
