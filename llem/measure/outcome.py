"""How a job's latest run ended, in its dir: ``outcome.txt`` (ok | skipped | failed), and the failed row
that every way of failing leaves (a bad config, a check, a server that did not start, a process that died)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # the row's modules are imported when a row is written: a sweep's driver may never need them
    from omegaconf import DictConfig

    from llem.config import Config
    from llem.results.row import Stage

log = logging.getLogger(__name__)

OUTCOME = "outcome.txt"  # ok | skipped | failed: how this job's latest run ended


def record_failure(job_dir: Path, error: str, error_type: str, stage: Stage, *, config: Optional[Config] = None,
                   cfg: Optional[DictConfig] = None, chash: Optional[str] = None,
                   warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """Write a failed row (the config typed when there is one, else as the DictConfig holds it) and the
    job's outcome, and return the row's values. Never raises: if the full row cannot be built or
    written, a row of the outcome alone is; if not even that, the error is logged."""
    from llem import results
    from llem.results import environment
    from llem.results.row import Notes, Outcome, assemble

    outcome = Outcome(status="failed", error=error, error_type=error_type, error_stage=stage.value, config_hash=chash)
    notes = Notes(warnings=list(warnings or []))
    try:
        row = assemble({Outcome: outcome, Notes: notes}, config=config, config_tree=None if config else cfg,
                       env=environment.capture([]))
        results.write_result(row, job_dir)
    except Exception as exc:
        log.error("could not write the failed row (%s: %s); writing its outcome alone", type(exc).__name__, exc)
        row = assemble({Outcome: outcome, Notes: notes})
        try:
            results.write_result(row, job_dir)
        except Exception as again:
            log.error("no result written for %s: %s", job_dir, again)
    try:
        set_outcome(job_dir, "failed")
    except OSError as exc:
        log.error("no outcome written for %s: %s", job_dir, exc)
    return row.to_dict()


def set_outcome(job_dir: Path, outcome: str) -> None:
    """Replace the job's outcome file at once (a reader never sees half of it)."""
    tmp = job_dir / f".{OUTCOME}.{os.getpid()}"
    tmp.write_text(outcome + "\n")
    os.replace(tmp, job_dir / OUTCOME)
