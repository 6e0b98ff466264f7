"""``hydra/sweeper=serial`` (llem's default): Hydra's grid sweeper, made so that one job cannot stop
a sweep.

Hydra composes every job's config before launching it, and a job whose config cannot be composed
(``batch=abc``: a value of the wrong type) stops the whole sweep — the jobs after it never run. Here
such a job is failed alone: it gets a job dir with a failed result row (``error_stage=config``,
Hydra's message) and an outcome, and the other jobs of the batch are launched as usual. The batch
size (one job at a time on one machine) is the config's ``max_batch_size``.

Around each batch it logs the sweep's progress (``llem.sweep.SweepProgress``): ``job i of N`` with
the job's overrides, the elapsed time and an estimate of the time left, then each job's outcome
and duration. Dry runs print their own line per job instead. It also shares the grid with the jobs
(``llem.deploy.reuse.SweepJobs``), so that an engine kept for the next jobs is built for all of them.

The grid is put in the run order ``sweep.order`` asks for (llem.sweep_order) before it is batched and shared:
each job's number (``hydra.job.num``) is its position in that order; its dir name, from its overrides, is not
affected.
"""

from __future__ import annotations

import logging
import time
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)


class LlemSweeper(BasicSweeper):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = _ComposableOnly(self.launcher, hydra_context, config, self)

    def split_arguments(self, overrides: List[Any], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        """Hydra's grid in the order of ``sweep.order`` (checked first: a bad value stops the sweep before any job
        runs), then cut into batches of ``max_batch_size``."""
        from hydra.errors import CompactHydraException
        from omegaconf import OmegaConf

        from llem.config import SweepConfig
        from llem.errors import ConfigError
        from llem.sweep_order import reorder

        try:
            settings = SweepConfig(**OmegaConf.to_container(self.config.sweep, resolve=True))
            (grid,) = BasicSweeper.split_arguments(overrides, None)
            jobs = reorder(grid, settings.order, settings.seed)
        except ConfigError as exc:  # said as one line, no traceback: nothing has run yet
            raise CompactHydraException(str(exc)) from None
        if settings.order != "grid":
            log.info("sweep.order=%s: %d jobs reordered", settings.order, len(jobs))
        return [list(chunk) for chunk in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing here: the launcher wrapper composes each job and fails the bad ones alone."""


class _ComposableOnly:
    """Wraps the launcher: jobs whose config cannot be composed get a failed row and are not launched;
    the progress of the sweep is logged around each batch."""

    def __init__(self, launcher: Any, hydra_context: Any, config: Any, sweeper: BasicSweeper) -> None:
        self.launcher, self.hydra_context, self.config, self.sweeper = launcher, hydra_context, config, sweeper
        self.progress: Optional[Any] = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        self._share_grid()
        progress = self._progress()
        self._say(progress.starting(initial_job_idx, job_overrides) if progress else [])
        good: List[Sequence[str]] = []
        indices: List[int] = []
        uncomposable = []
        for offset, overrides in enumerate(job_overrides):
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception as exc:
                from llem.sweep import fail_uncomposable

                fail_uncomposable(self.config, list(overrides), exc)
                uncomposable.append((initial_job_idx + offset, "failed (its config cannot be composed)", None))
            else:
                good.append(overrides)
                indices.append(initial_job_idx + offset)
        started, tic = time.time(), time.monotonic()
        returns = []
        for first, run in _runs(indices):  # each job's number stays its position in the sweep's order
            returns.extend(self.launcher.launch(good[first:first + len(run)], initial_job_idx=run[0]))
        if progress:
            from llem.sweep import job_outcome

            ended = [(index, *job_outcome(ret, started)) for index, ret in zip(indices, returns)]
            self._say(progress.finished(sorted(uncomposable + ended), time.monotonic() - tic))
        return returns

    def _share_grid(self) -> None:
        """The whole grid, and how to type one job's config, for a job that builds an engine the jobs after it
        can measure on (llem.deploy.reuse: a build is sized for the largest batch among them)."""
        from llem.deploy.reuse import SweepJobs

        jobs = [tuple(job) for batch in self.sweeper.overrides or [] for job in batch]
        if SweepJobs.jobs == jobs:
            return

        def compose(overrides: Sequence[str]) -> Any:
            from omegaconf import open_dict

            from llem.config import to_config

            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                del cfg["hydra"]
            return to_config(cfg)

        SweepJobs.jobs, SweepJobs.compose = jobs, compose

    def _progress(self) -> Optional[Any]:
        """The sweep's progress, made at its first batch (the grid is known by then); none in a dry run."""
        if self.progress is None and not self.config.get("dry_run"):
            from llem.sweep import SweepProgress, expected_skips

            jobs = [job for batch in self.sweeper.overrides or [] for job in batch]
            self.progress = SweepProgress(len(jobs), expected_skips(self.config, jobs))
            self._say([self.progress.opening()])
        return self.progress

    def _say(self, lines: List[str]) -> None:
        """Log through Hydra's driver logging (a job run in this process leaves its own log set up)."""
        if not lines:
            return
        from hydra.core.utils import configure_log

        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for line in lines:
            log.info("%s", line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


def _runs(indices: List[int]) -> List[Any]:
    """``indices`` cut into runs of consecutive numbers: (offset of the run's first, the run)."""
    runs: List[Any] = []
    for at, index in enumerate(indices):
        if runs and runs[-1][1][-1] + 1 == index:
            runs[-1][1].append(index)
        else:
            runs.append((at, [index]))
    return runs
