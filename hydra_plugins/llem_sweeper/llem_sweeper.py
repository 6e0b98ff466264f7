"""``hydra/sweeper=serial`` (llem's default): Hydra's grid sweeper, made so that one job cannot stop
a sweep.

Hydra composes every job's config before launching it, and a job whose config cannot be composed
(``batch=abc``: a value of the wrong type) stops the whole sweep — the jobs after it never run. Here
such a job is failed alone: it gets a job dir with a failed result row (``error_stage=config``,
Hydra's message) and an outcome, and the other jobs of the batch are launched as usual. The batch
size (one job at a time on one machine) is the config's ``max_batch_size``.
"""

from __future__ import annotations

import logging
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)


class LlemSweeper(BasicSweeper):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = _ComposableOnly(self.launcher, hydra_context, config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing here: the launcher wrapper composes each job and fails the bad ones alone."""


class _ComposableOnly:
    """Wraps the launcher: jobs whose config cannot be composed get a failed row and are not launched."""

    def __init__(self, launcher: Any, hydra_context: Any, config: Any) -> None:
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        good: List[Sequence[str]] = []
        for overrides in job_overrides:
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception as exc:
                from llem.job import fail_uncomposable

                fail_uncomposable(self.config, list(overrides), exc)
            else:
                good.append(overrides)
        return self.launcher.launch(good, initial_job_idx=initial_job_idx) if good else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)
