"""One Hydra job: validate, skip if already done, check, start, measure, never crash the sweep.

Where the engine runs — this process, a spawned measurement process, an engine kept from the job before, a
launched or an external server — is the job's :class:`~llem.deploy.base.Deployment`, picked once from its
config; what outlives the job (a kept engine, a running server) is the driver's
:class:`~llem.deploy.held.Held`, handed in. The parent (this module) never opens a CUDA context. Every way a
job can end leaves a ``results.parquet``: ``ok``, or ``failed`` with the error and the stage it happened in —
a bad config, a failed check, an exception in the parent or the measurement, a measurement process that
died, a server that did not start, a write that failed. Only an interrupt (SIGINT, SIGTERM) leaves no row:
the measurement process is stopped first, so nothing half-measured is written, and a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import DictConfig

from llem import results
from llem.backends import engine_class
from llem.config import Config, config_hash, model_source, to_config, validate
from llem.deploy.base import Deployment, StartFailed
from llem.deploy.choose import pick, place_of
from llem.deploy.held import Held
from llem.deploy.process import Interrupted, interruptible
from llem.measure.outcome import record_failure, set_outcome
from llem.results.row import Stage
from llem.run.objective import objective
from llem.run.sweep_order import check_sweeper, sweeper_of
from llem.support import secrets
from llem.support.console import log_failure, summary_line
from llem.support.errors import ConfigError, DeviceError, EngineUnavailable, ServerError
from llem.support.locks import gpu_lock, host_lock, job_lock
from llem.workload import conversations, trace

log = logging.getLogger(__name__)


def _protect_api_key(cfg: DictConfig) -> None:
    """The variable server.api_key_env names is a secret whatever it is called, from the start of the job
    (before any file is scrubbed) and in every process it starts (the name travels in the environment)."""
    from omegaconf import OmegaConf

    from llem.config.load import ENV_NAME

    name = OmegaConf.select(cfg, "server.api_key_env", default=None, throw_on_missing=False)
    if isinstance(name, str) and ENV_NAME.fullmatch(name):
        secrets.protect(name)


def _scrub_hydra_files(job_dir: Path, hydra_cfg: Any) -> None:
    """Hydra saved the config and overrides as given: a secret typed into an override is replaced
    by its variable's name there too (``multirun.yaml`` of a sweep, ``.hydra/*.yaml`` of the job)."""
    try:
        secrets.scrub_tree(job_dir / ".hydra")
        if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
            secrets.scrub_file(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    except OSError as exc:
        log.warning("Hydra's saved config was not checked for secrets: %s", exc)


def run(cfg: DictConfig, held: Held) -> Tuple[Dict[str, Any], float]:
    """Run one job in Hydra's job dir, with what the driver holds between jobs (``held``). Returns its result
    values and the sweeper objective; never raises for a job-level failure (an interrupt raises
    :class:`Interrupted`)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    _protect_api_key(cfg)
    _scrub_hydra_files(job_dir, hydra_cfg)
    if cfg.get("dry_run"):
        from llem.run.dry_run import dry_run

        return dry_run(cfg, job_dir), float("nan")
    with interruptible(job_dir, held), job_lock(job_dir) as locked:
        if not locked:
            log.error("%s is in use by another llem process: this job was not run (no result written)", job_dir)
            return {"status": "busy"}, objective({"status": "busy"}, None)
        config = None
        try:
            config = to_config(cfg)
            engine_class(config.backend.name).validate_config(config)
            validate.check(config)
            trace.check_config(config)
            conversations.check_config(config)
            check_sweeper(config.sweep.order, sweeper_of(hydra_cfg), str(hydra_cfg.mode) == "RunMode.MULTIRUN")
        except Exception as exc:  # ConfigError names the key; anything else is still this job's failure
            error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log_failure(f"invalid config: {error}")
            values = record_failure(job_dir, error, type(exc).__name__, Stage.config, cfg=cfg)
            values = _with_sweep_place(job_dir, values, config.sweep.order if config else None)
            return values, objective(values, None)
        try:
            values = run_config(config, job_dir, held)
        except Interrupted:
            raise
        except Exception as exc:  # the parent itself failed: still a row, and the sweep goes on
            log.exception("the job's parent failed: %s", exc)
            values = record_failure(job_dir, f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.start,
                                    config=config, chash=config_hash(config))
        return values, objective(values, config)


def run_config(config: Config, job_dir: Path, held: Optional[Held] = None) -> Dict[str, Any]:
    """Resume-skip, check, start, measure where the job's deployment says, and make sure a result row exists.
    Without ``held`` (a job run on its own) nothing outlives the job."""
    held = held if held is not None else Held()
    sweep = _sweep_dir()
    place = place_of(config, job_dir, sweep, _overrides() if sweep is not None else ())  # runtime=auto resolved
    config, chash = place.config, place.chash
    previous = results.read_result(job_dir)
    if previous and previous.get("status") == "ok" and previous.get("config_hash") == chash:
        log.info("skipped: %s already holds a successful result (config_hash %s)", job_dir, chash)
        set_outcome(job_dir, "skipped")
        return previous

    (job_dir / results.RESULTS).unlink(missing_ok=True)  # a stale failed/other-config row must not linger
    if place.runtime_note:
        log.info("%s", place.runtime_note)
    log.info("job %s: backend=%s model=%s batch=%s device=%s", chash, config.backend.name, config.model.name,
             config.batch, place.device)
    deployment = pick(place, held)
    try:
        deployment.check()
    except (DeviceError, model_source.ModelUnavailable, ServerError, EngineUnavailable, ConfigError) as exc:
        error = f"{exc} ({place.runtime_note})" if place.runtime_note else str(exc)
        log_failure(error)
        values = record_failure(job_dir, error, type(exc).__name__, Stage.check, config=config, chash=chash)
        return _with_sweep_place(job_dir, values, config.sweep.order)
    uses_host = place.device == "cpu" or "codecarbon" in config.energy.meters  # the host's CPU, or a meter of all
    with gpu_lock(place.gpus()), host_lock(job_dir, exclusive=uses_host):
        try:
            values = _start_and_measure(deployment)
        finally:
            deployment.finish()
    values = _with_sweep_place(job_dir, values, config.sweep.order, deployment.started_cold)
    set_outcome(job_dir, "ok" if values.get("status") == "ok" else "failed")
    log.info("%s → %s", summary_line(values), job_dir)
    return values


def _start_and_measure(deployment: Deployment) -> Dict[str, Any]:
    place = deployment.place
    if place.config.cold_start:  # whatever an earlier job left (kept engine, server, container) goes first
        log.info("cold_start: nothing an earlier job left serves this one")
        deployment.held.release()
    if place.config.cooldown_s > 0:
        log.info("cooldown %.1f s", place.config.cooldown_s)
        time.sleep(place.config.cooldown_s)
    try:
        idle = deployment.start()
    except StartFailed as exc:
        return record_failure(place.job_dir, exc.error, exc.error_type, exc.stage, config=place.config,
                              chash=place.chash)
    if place.problem:
        idle.warnings.append(place.problem)
    if place.runtime_note:
        idle.warnings.append(place.runtime_note)
    return deployment.measure(idle)


def _with_sweep_place(job_dir: Path, values: Dict[str, Any], order: Optional[str],
                      started_cold: Optional[bool] = None) -> Dict[str, Any]:
    """The row with the job's place in its sweep (``order``: its sweep.order) and whether it started cold: known
    to the job's parent, not where it measured."""
    from llem.results.files import amend_result
    from llem.results.preparation import SweepPlace

    if _sweep_dir() is None:
        part = SweepPlace(sweep_position_null_reason="a single run, not a sweep", started_cold=started_cold)
    else:
        from hydra.core.hydra_config import HydraConfig

        part = SweepPlace(sweep_position=int(HydraConfig.get().job.num) + 1, sweep_order=order,
                          started_cold=started_cold)
    try:
        return amend_result(job_dir, part) or values
    except Exception as exc:  # the row stands without them
        log.warning("the job's place in the sweep was not added to its row: %s", exc)
        return values


def _overrides() -> Tuple[str, ...]:
    """The job's overrides in its sweep (a kept engine is built for the jobs after it)."""
    from hydra.core.hydra_config import HydraConfig

    return tuple(HydraConfig.get().overrides.task)


def _sweep_dir() -> Optional[Path]:
    """The sweep dir when this job is one of a multirun (its jobs share a device-idle floor), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if str(hydra_cfg.mode) == "RunMode.MULTIRUN" else None
