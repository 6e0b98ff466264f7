"""What a sweep's driver does around its jobs (a Hydra callback, for every launcher):

- at the start, lock the sweep dir, so a second sweep on the same dir is refused with a clear
  message instead of running (and measuring) every job beside the first;
- at the end, count how the jobs ended (each leaves its outcome in its own dir), print it, make
  the exit code say when any failed, and write the sweep's index for ``python -m llem.aggregate``;
- per job, time it in the process that runs it (:class:`SweepSummary` travels with the job to a
  submitit worker), for the driver's progress lines (:class:`SweepProgress`, fed by llem's sweeper).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from llem.config.dirnames import sweep_job_dirname
from llem.measure.outcome import OUTCOME
from llem.support.locks import SWEEP_LOCK, holder, try_lock

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Hydra callback around a multirun."""

    failures = 0  # read by __main__ after the sweep: non-zero exit when any job failed

    def __init__(self) -> None:
        self.started = 0.0
        self.lock = None
        self.dry_run = False
        self.created: List[Path] = []
        self.job_started: Optional[float] = None

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a launcher's worker (submitit) before its job's dir is named: llem's
        resolvers (``${llem_job_dir:}`` in hydra.sweep.subdir) must be known there too."""
        self.__dict__.update(state)
        from llem.config.help import register_resolvers

        register_resolvers()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """The job's duration rides back to the driver on its JobReturn (``llem_duration_s``), whatever the launcher."""
        if job_return is not None and self.job_started is not None:
            job_return.llem_duration_s = time.monotonic() - self.job_started

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        if config.get("dry_run"):
            return
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".llem-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            log.error("hydra.run.dir=%s is not writable (%s): choose a folder you can write to", run_dir,
                      exc.strerror or exc)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        sweep = Path(config.hydra.sweep.dir)
        self.dry_run = bool(config.get("dry_run"))
        if self.dry_run:  # reads only: no lock; remove what Hydra creates for it
            self.created = [p for p in (sweep, *sweep.parents) if not p.exists()]
            return
        try:
            sweep.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("hydra.sweep.dir=%s cannot be created (%s): choose a writable folder", sweep, exc.strerror)
            sys.exit(2)
        self.lock = try_lock(sweep / SWEEP_LOCK)
        if self.lock is None:
            log.error("hydra.sweep.dir=%s is in use by another llem sweep (%s): wait for it to end, or give this "
                      "sweep another hydra.sweep.dir. Nothing was run.", sweep, holder(sweep / SWEEP_LOCK))
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if self.dry_run:
            self._remove_dry_run_files(sweep)
            return
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        failed = []
        for path in sorted(sweep.glob(f"**/{OUTCOME}")):
            if path.stat().st_mtime + 1 < self.started:
                continue  # a job of an earlier run of this sweep dir, not re-run now
            outcome = path.read_text().strip()
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "failed":
                failed.append(path.parent)
        log.info("sweep %s: %d ok, %d skipped, %d failed", sweep, counts["ok"], counts["skipped"], counts["failed"])
        for error, names in _by_error(failed).items():
            log.info("  %d failed with: %s", len(names), error)
            for name in names:
                log.info("    %s", name)
        if counts["failed"]:
            SweepSummary.failures = counts["failed"]
        try:  # the sweep's index makes `python -m llem.aggregate` fast on large sweeps
            from llem.aggregate.collect import collect

            collect([sweep])
        except Exception as exc:
            log.warning("sweep index not written (aggregate will read every job): %s", exc)
        if self.lock is not None:  # the file stays: unlinking it could let two later sweeps both lock
            self.lock.close()

    def _remove_dry_run_files(self, sweep: Path) -> None:
        """A dry run writes nothing: remove the multirun.yaml and the folders Hydra made for it."""
        if sweep in self.created:
            (sweep / "multirun.yaml").unlink(missing_ok=True)
        for folder in self.created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


class SweepProgress:
    """What the driver says while a sweep runs: ``job i of N`` with the job's overrides, the sweep's
    elapsed time and an estimate of the time left, and each finished job's outcome and duration.

    The estimate is the launch time per job that ran (not skipped) times the jobs still to run, so
    resumed jobs that skip in a second neither shorten it nor count as left: a job whose dir
    already holds a successful result is expected to skip. Batches launched together (submitit's
    array_parallelism) count by their wall time, so parallel jobs make the estimate shorter, as they should.
    """

    def __init__(self, total: int, expect_skip: Iterable[int] = (), clock=time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.started = clock()
        self.expect_skip: Set[int] = set(expect_skip)  # indices (0-based) of jobs that will likely skip
        self.done: Set[int] = set()
        self.ran_jobs = 0
        self.ran_s = 0.0

    def opening(self) -> str:
        skip = len(self.expect_skip)
        return f"sweep of {self.total} jobs" + (f"; {skip} already have a successful result and should skip"
                                               if skip else "")

    def left_s(self) -> Optional[float]:
        """Seconds left, or None while no job has run to time it by."""
        to_run = sum(1 for i in range(self.total) if i not in self.done and i not in self.expect_skip)
        if not to_run:
            return 0.0
        return self.ran_s / self.ran_jobs * to_run if self.ran_jobs else None

    def clock_line(self) -> str:
        left = self.left_s()
        estimate = "time left unknown until a job has run" if left is None else f"about {duration(left)} left"
        return f"elapsed {duration(self.clock() - self.started)}, {estimate}"

    def starting(self, first: int, batch: Sequence[Sequence[str]]) -> List[str]:
        """The lines before a batch (jobs ``first``, ``first + 1``, … of the grid, 0-based) is launched."""
        jobs = [f"job {first + k + 1} of {self.total}: {' '.join(overrides) or '(defaults)'}"
                for k, overrides in enumerate(batch)]
        if len(jobs) == 1:
            return [f"{jobs[0]} | {self.clock_line()}"]
        return [f"jobs {first + 1}-{first + len(jobs)} of {self.total} launched together | {self.clock_line()}",
                *jobs]

    def finished(self, results: Sequence[Tuple[int, str, Optional[float]]], wall_s: float) -> List[str]:
        """(index, outcome, duration or None) of each job of a batch that took ``wall_s`` → its lines."""
        ran = 0
        lines = []
        for index, outcome, seconds in results:
            self.done.add(index)
            ran += outcome in ("ok", "failed") or outcome.startswith("crashed")  # skipped, uncomposable: no time
            took = f" in {duration(seconds)}" if seconds is not None else ""
            lines.append(f"job {index + 1} of {self.total}: {outcome}{took}")
        if ran:
            self.ran_jobs += ran
            self.ran_s += wall_s
        return lines


def duration(seconds: float) -> str:
    """0.04 s, 12.3 s, 4m05s, 2h03m."""
    if seconds < 60:
        return f"{seconds:.{2 if seconds < 1 else 1}f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def job_outcome(job_return: Any, since: float) -> Tuple[str, Optional[float]]:
    """How a launched job ended (its dir's outcome, written after ``since``) and how long it took."""
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    seconds = getattr(job_return, "llem_duration_s", None)
    job_dir = OmegaConf.select(job_return.hydra_cfg, "hydra.runtime.output_dir") if job_return.hydra_cfg else None
    path = Path(job_dir) / OUTCOME if job_dir else None
    try:
        if path is not None and path.stat().st_mtime + 1 >= since:
            return path.read_text().strip(), seconds
    except OSError:
        pass
    if job_return.status == JobStatus.FAILED:
        return f"crashed ({type(job_return._return_value).__name__})", seconds
    return "no outcome written (its dir in use by another llem process?)", seconds


def expected_skips(config: DictConfig, jobs: Sequence[Sequence[str]]) -> List[int]:
    """Indices of the jobs whose dir already ended ok or skipped: a rerun resumes them by skipping."""
    sweep = Path(config.hydra.sweep.dir)
    found = []
    for index, overrides in enumerate(jobs):
        try:
            outcome = (sweep / sweep_job_dirname(config, list(overrides)) / OUTCOME).read_text().strip()
        except (OSError, ValueError):
            continue
        if outcome in ("ok", "skipped"):
            found.append(index)
    return found


def fail_uncomposable(config: DictConfig, overrides: List[str], exc: Exception) -> None:
    """A sweep job whose config cannot be composed: a failed row in its own dir, and the sweep goes on."""
    job_dir = Path(config.hydra.sweep.dir) / sweep_job_dirname(config, overrides)
    error = " ".join(str(exc).split())  # Hydra's message, on one line
    SweepSummary.failures += 1
    if config.get("dry_run"):
        log.info("dry run: %s → invalid: %s", " ".join(overrides), error)
        return
    log.error("job %s: its config cannot be composed: %s (failed alone; the sweep goes on)", " ".join(overrides),
              error)
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as write_error:
        log.error("no result written for it: %s", write_error)
        return
    from llem.measure.outcome import record_failure
    from llem.results.row import Stage

    record_failure(job_dir, error, type(exc).__name__, Stage.config, warnings=[f"overrides: {' '.join(overrides)}"])


def _by_error(failed: List[Path]) -> Dict[str, List[str]]:
    """The failed jobs grouped by their row's error, so that one cause shared by every job is said once."""
    from llem.results import read_result

    groups: Dict[str, List[str]] = {}
    for job_dir in failed:
        row = read_result(job_dir) or {}
        error = str(row.get("error") or "no result row")
        groups.setdefault(error[:300] + ("…" if len(error) > 300 else ""), []).append(job_dir.name)
    return groups
