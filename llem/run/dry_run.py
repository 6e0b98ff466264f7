"""``dry_run=true``: validate a job as a real run would, say what would happen, run nothing.

With ``-m`` every job of the sweep is checked: its config (types, ranges, the engine's own
checks that need no import of the engine), then the real run's check stage (its deployment's
:meth:`~llem.deploy.base.Deployment.check`: its devices, the engine's packages and where pretrained weights
would come from, or that an external server answers at ``server.url``), and whether a successful result
with the same ``config_hash`` is already in its dir (the job would be skipped).
Nothing is written: the job dir Hydra made for the check is removed again when it is empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig

from llem import results
from llem.config import config_hash, to_config, validate
from llem.measure import sizing
from llem.support.errors import LlemError
from llem.workload import conversations, trace

log = logging.getLogger(__name__)


def dry_run(cfg: DictConfig, job_dir: Path) -> Dict[str, Any]:
    """Check one job; log one line saying what a real run would do; return {status: would_*}."""
    from hydra.core.hydra_config import HydraConfig

    from llem.backends import engine_class
    from llem.deploy.choose import pick, place_of
    from llem.deploy.held import Held

    overrides = " ".join(HydraConfig.get().overrides.task) or "(defaults)"
    note = None  # why runtime=auto chose where the job would run
    try:
        config = to_config(cfg)
        engine = engine_class(config.backend.name)
        engine.validate_config(config)
        validate.check(config)
        trace.check_config(config)
        conversations.check_config(config)
        place = place_of(config, job_dir)
        config, note = place.config, place.runtime_note  # runtime=auto resolved
        pick(place, Held()).check()  # the real run's check stage, where its engine would run
        device = place.device
        instance = engine(config, device)
        plan = sizing.for_job(config, instance, on_gpu=device == "cuda")
    except Exception as exc:  # a dry run reports every problem, and never stops the others
        why = str(exc) if isinstance(exc, LlemError) else f"{type(exc).__name__}: {exc}"
        why = f"{why} ({note})" if note else why
        log.info("dry run: %s → invalid: %s", overrides, why)
        status = "would_fail"
        chash = None
    else:
        chash = config_hash(config)
        previous = results.read_result(job_dir)
        done = bool(previous) and previous.get("status") == "ok" and previous.get("config_hash") == chash
        status = "would_skip" if done else "would_run"
        what = ("would be skipped (a successful result is there)" if done else
                f"would run on {device}, {sizing.describe(plan)}")
        log.info("dry run: %s → config_hash %s, %s: %s", overrides, chash, what, job_dir)
    _remove_if_empty(job_dir)
    return {"status": status, "config_hash": chash}


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
