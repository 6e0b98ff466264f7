"""What a sweep's driver does around its jobs (a Hydra callback, for every launcher):

- at the start, lock the sweep dir, so a second sweep on the same dir is refused with a clear
  message instead of running (and measuring) every job beside the first;
- at the end, count how the jobs ended (each leaves its outcome in its own dir), print it, make
  the exit code say when any failed, and write the sweep's index for ``python -m llem.aggregate``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, List

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from llem.locks import SWEEP_LOCK, holder, try_lock

log = logging.getLogger(__name__)
OUTCOME = "outcome.txt"


class SweepSummary(Callback):
    """Hydra callback around a multirun."""

    failures = 0  # read by __main__ after the sweep: non-zero exit when any job failed

    def __init__(self) -> None:
        self.started = 0.0
        self.lock = None
        self.dry_run = False
        self.created: List[Path] = []

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
                failed.append(path.parent.name)
        log.info("sweep %s: %d ok, %d skipped, %d failed", sweep, counts["ok"], counts["skipped"], counts["failed"])
        for name in failed:
            log.info("  failed: %s", name)
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
