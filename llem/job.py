"""One Hydra job: validate, skip if already done, measure in a fresh process, never crash the sweep.

The parent (this module) never opens a CUDA context: it spawns the measurement process, which
imports its engine (touching no device) while the parent measures the device-idle baseline, then
gives it the job and waits for it (a blocking wait, no polling). Every
way a job can end leaves a ``results.parquet``: ``ok``, or ``failed`` with the error and the
stage it happened in — a bad config, an exception in the parent or the child, a measurement
process that died, a write that failed. Only an interrupt (SIGINT, SIGTERM) leaves no row: the
measurement process is stopped first, so nothing half-measured is written, and a rerun resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from llem import dirnames, environment, model_source, results, secrets, validate
from llem.backends import engine_class
from llem.config import Config, config_hash, to_config
from llem.console import log_failure, summary_line
from llem.deploy import floors
from llem.deploy.held import Held
from llem.energy.idle import DeviceIdle
from llem.energy.nvml import gpu_counts, visible_uuids
from llem.errors import ConfigError, DeviceError, EngineUnavailable, ServerError
from llem.kept_engine import Reuse, reuse_for
from llem.locks import gpu_lock, host_lock, job_lock
from llem.measure_process import (
    Interrupted,
    Started,
    abandon,
    interruptible,
    kept_serves,
    measure_isolated,
    measure_kept,
    start_isolated,
    start_kept,
    stop_kept,
)
from llem.objective import objective
from llem.results.row import Notes, Outcome, Stage, assemble

log = logging.getLogger(__name__)

_HELD = Held()  # the driver's container (runtime=docker|podman)
OUTCOME = "outcome.txt"  # ok | skipped | failed: how this job's latest run ended
SERVER_LOGS = ".llem-servers"  # in a sweep dir: the log of each server its jobs started


def record_failure(job_dir: Path, error: str, error_type: str, stage: Stage, *, config: Optional[Config] = None,
                   cfg: Optional[DictConfig] = None, chash: Optional[str] = None,
                   warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """Write a failed row (the config typed when there is one, else as the DictConfig holds it) and the
    job's outcome, and return the row's values. Never raises: if the full row cannot be built or
    written, a row of the outcome alone is; if not even that, the error is logged."""
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
        _set_outcome(job_dir, "failed")
    except OSError as exc:
        log.error("no outcome written for %s: %s", job_dir, exc)
    return row.to_dict()


def _protect_api_key(cfg: DictConfig) -> None:
    """The variable server.api_key_env names is a secret whatever it is called, from the start of the job
    (before any file is scrubbed) and in every process it starts (the name travels in the environment)."""
    from omegaconf import OmegaConf

    from llem.config_load import ENV_NAME

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


def resolve_device(config: Config) -> Tuple[str, Optional[str]]:
    """(cpu or cuda, a problem) decided without touching CUDA: NVML tells which GPUs are visible.

    device=cuda with no visible GPU is a problem (the job refuses to measure); device=auto then
    measures on the CPU, with a warning when the host has GPUs that were hidden from the job.
    """
    from llem.config import Device

    visible, total = gpu_counts()
    hidden = (f"none of the host's {total} GPU(s) is visible to this job (CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}; under submitit set hydra.launcher.gpus_per_node)")
    if config.device == Device.cuda:
        return "cuda", None if visible else f"device=cuda was asked for, but {hidden if total else 'no GPU is visible'}"
    if config.device == Device.auto:
        if visible:
            return "cuda", None
        return "cpu", (f"device=auto measures on the CPU: {hidden}" if total else None)
    return "cpu", None


def check_gpus(config: Config, device: str) -> None:
    """The engine's GPU count against the GPUs this job can see (any engine), before anything runs."""
    if device != "cuda":
        return
    needed = engine_class(config.backend.name).gpus_required(config.backend)
    visible = gpu_counts()[0]
    if visible < needed:
        raise DeviceError(f"backend={config.backend.name} needs {needed} GPUs for this config, but {visible} are "
                          "visible to this job (CUDA_VISIBLE_DEVICES, or hydra.launcher.gpus_per_node under submitit)")


def check_job(config: Config, device: str, problem: Optional[str]) -> None:
    """The check stage, before the baseline and any load (a dry run runs the same): the device, the GPUs, and
    what the server mode needs: an external server answering now, within 2 s; else the engine's packages (its
    own, or its server's) and the model's weights (a local copy, or a reachable Hub)."""
    if device == "cuda" and problem:
        raise DeviceError(problem)
    check_gpus(config, device)
    if config.runtime.in_container:  # the engine is the image's: nothing of it is needed on the host
        from llem.deploy.base import JobPlace
        from llem.deploy.choose_container import pick_container

        pick_container(JobPlace(config, config_hash(config), Path("."), device, 0), _HELD).check_needs()
        return
    if config.server.mode == "external":  # the server holds the model
        from llem.serving.server import auth_headers, check_external

        check_external(config.server.url, auth_headers(config.server))
        return
    engine = engine_class(config.backend.name)(config, device)  # a missing package first: the user's fix
    if config.server.mode == "none":
        engine.check()
    else:
        engine.server_check()
    model_source.check(config.model)


def run(cfg: DictConfig) -> Tuple[Dict[str, Any], float]:
    """Run one job in Hydra's job dir. Returns its result values and the sweeper objective; never
    raises for a job-level failure (an interrupt raises :class:`Interrupted`)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    _protect_api_key(cfg)
    _scrub_hydra_files(job_dir, hydra_cfg)
    if cfg.get("dry_run"):
        from llem.dry_run import dry_run

        return dry_run(cfg, job_dir), float("nan")
    with interruptible(job_dir), job_lock(job_dir) as held:
        if not held:
            log.error("%s is in use by another llem process: this job was not run (no result written)", job_dir)
            return {"status": "busy"}, objective({"status": "busy"}, None)
        config = None
        try:
            config = to_config(cfg)
            engine_class(config.backend.name).validate_config(config)
            validate.check(config)
        except Exception as exc:  # ConfigError names the key; anything else is still this job's failure
            error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log_failure(f"invalid config: {error}")
            values = record_failure(job_dir, error, type(exc).__name__, Stage.config, cfg=cfg)
            return values, objective(values, None)
        try:
            values = run_config(config, job_dir)
        except Interrupted:
            raise
        except Exception as exc:  # the parent itself failed: still a row, and the sweep goes on
            log.exception("the job's parent failed: %s", exc)
            values = record_failure(job_dir, f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.start,
                                    config=config, chash=config_hash(config))
        return values, objective(values, config)


def run_config(config: Config, job_dir: Path) -> Dict[str, Any]:
    """Resume-skip, baseline, measure (isolated or not), and make sure a result row exists."""
    chash = config_hash(config)
    previous = results.read_result(job_dir)
    if previous and previous.get("status") == "ok" and previous.get("config_hash") == chash:
        log.info("skipped: %s already holds a successful result (config_hash %s)", job_dir, chash)
        _set_outcome(job_dir, "skipped")
        return previous

    (job_dir / results.RESULTS).unlink(missing_ok=True)  # a stale failed/other-config row must not linger
    device, problem = resolve_device(config)
    log.info("job %s: backend=%s model=%s batch=%s device=%s", chash, config.backend.name, config.model.name,
             config.batch, device)
    try:
        check_job(config, device, problem)
    except (DeviceError, model_source.ModelUnavailable, ServerError, EngineUnavailable, ConfigError) as exc:
        log_failure(str(exc))
        return record_failure(job_dir, str(exc), type(exc).__name__, Stage.check, config=config, chash=chash)
    gpus_needed = engine_class(config.backend.name).gpus_required(config.backend)
    uses_host = device == "cpu" or "codecarbon" in config.energy.meters  # the host's CPU, or a meter of all of it
    with gpu_lock(visible_uuids(gpus_needed) if device == "cuda" else []), host_lock(job_dir, exclusive=uses_host):
        if config.runtime.in_container:
            values = _in_container(config, chash, job_dir, device, gpus_needed, problem)
            _set_outcome(job_dir, "ok" if values.get("status") == "ok" else "failed")
            log.info("%s → %s", summary_line(values), job_dir)
            return values
        try:
            values = _measure(config, chash, job_dir, device, gpus_needed, problem)
        finally:
            if config.server.mode == "launch" and _sweep_dir() is None:  # a single run: its server goes with it
                from llem.serving.server import stop

                stop()
    _set_outcome(job_dir, "ok" if values.get("status") == "ok" else "failed")
    log.info("%s → %s", summary_line(values), job_dir)
    return values


def _in_container(config: Config, chash: str, job_dir: Path, device: str, gpus_needed: int,
                  problem: Optional[str]) -> Dict[str, Any]:
    """The job in a container (runtime=docker|podman): start (or reuse) it, measure, finish."""
    from llem.deploy.base import JobPlace, StartFailed
    from llem.deploy.choose_container import pick_container

    stop_kept()  # a kept engine or a server on the host would share the devices
    from llem.serving.server import stop

    stop()
    place = JobPlace(config, chash, job_dir, device, gpus_needed, sweep_dir=_sweep_dir(), problem=problem)
    deployment = pick_container(place, _HELD)
    try:
        try:
            idle = deployment.start()
        except StartFailed as exc:
            log.error("the container did not start: %s", exc.error)
            return record_failure(job_dir, exc.error, exc.error_type, exc.stage, config=config, chash=chash)
        if problem:
            idle.warnings.append(problem)
        return deployment.measure(idle)
    finally:
        deployment.finish()


def _measure(config: Config, chash: str, job_dir: Path, device: str, gpus_needed: int,
             problem: Optional[str]) -> Dict[str, Any]:
    if config.cooldown_s > 0:
        log.info("cooldown %.1f s", config.cooldown_s)
        time.sleep(config.cooldown_s)
    holder = {"idle": DeviceIdle()}

    def take_idle() -> None:  # with no CUDA context on the GPUs: before a server is started
        if device == "cuda" and config.baseline.device_idle_s > 0:
            holder["idle"] = floors.for_job(config, gpus_needed, job_dir, _sweep_dir())

    reuse = _reuse(config, device)
    kept_idle = floors.for_kept(config, gpus_needed, device, _sweep_dir()) if kept_serves(reuse) else None
    if kept_idle is not None:
        holder["idle"] = kept_idle  # the kept engine holds the GPUs: the floor the sweep took before its build
    else:
        stop_kept()  # a kept engine of an earlier job frees the GPUs before this job's floor or server
    if config.server.mode == "none":
        from llem.serving.server import stop

        stop()  # a server an earlier job of the sweep left running would share the GPUs
    endpoint, log_from = None, 0
    if config.server.mode == "launch":
        from llem.serving.server import launch, log_size

        try:
            sweep = _sweep_dir()  # a sweep's server outlives its jobs: its log is the sweep's
            endpoint = launch(engine_class(config.backend.name)(config, device), config,
                              sweep / SERVER_LOGS if sweep else job_dir,
                              visible_uuids(gpus_needed) if device == "cuda" else [], before_start=take_idle,
                              log_name=None if sweep else "server.log")
        except (ServerError, EngineUnavailable, OSError, RuntimeError) as exc:
            log.error("the server did not start: %s", exc)
            return record_failure(job_dir, f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.load,
                                  config=config, chash=chash)
        log_from = 0 if endpoint.start_s is not None else log_size(endpoint)
        if endpoint.reused and device == "cuda":
            holder["idle"] = floors.for_server(gpus_needed, _sweep_dir())
    started = None
    if config.server.mode != "launch":
        if kept_idle is None:  # on the kept engine the floor is the sweep's, set above
            started = _start_ahead(config, device, reuse)
            try:
                take_idle()
            except BaseException:
                abandon(started)
                if reuse is not None:
                    stop_kept()
                raise
        if config.server.mode == "external":
            from llem.serving.server import external

            endpoint = external(config)
    idle = holder["idle"]
    if problem:
        idle.warnings.append(problem)
    try:
        values = _run_measurement(config, chash, job_dir, device, idle, endpoint, reuse, started)
    finally:
        if endpoint is not None and endpoint.mode == "launch":
            from llem.serving.server import copy_log

            copy_log(endpoint, log_from, job_dir)
    return values


def _start_ahead(config: Config, device: str, reuse: Optional[Reuse]) -> Optional[Started]:
    """Spawn the measurement process before the device-idle floor, so that it imports its engine (seconds:
    ~10 s for vLLM) while the floor is metered; the import touches no device. None when the job measures
    in this process, or a server (which the process does not import)."""
    if not config.isolate or config.server.mode != "none":
        return None
    if reuse is not None:
        start_kept(config, device, reuse)  # held as the kept process: measure_kept finds it
        return None
    return start_isolated(config, device, preload=True)


def _reuse(config: Config, device: str) -> Optional[Reuse]:
    """What this job asks of a kept engine: only jobs of a sweep run here, in turn, keep one."""
    from hydra.core.hydra_config import HydraConfig

    if _sweep_dir() is None:
        return None
    return reuse_for(config, device, list(HydraConfig.get().overrides.task))


def _run_measurement(config: Config, chash: str, job_dir: Path, device: str, idle: DeviceIdle,
                     endpoint: Any, reuse: Optional[Reuse] = None, started: Optional[Started] = None
                     ) -> Dict[str, Any]:
    if not config.isolate:
        from llem.experiment import Experiment

        return Experiment(config, job_dir, device, idle, endpoint=endpoint).run().to_dict()
    if reuse is not None and endpoint is None:
        died = measure_kept(config, job_dir, device, idle, reuse)
    else:
        died = measure_isolated(config, job_dir, device, idle, endpoint, started)
    values = results.read_result(job_dir)
    if died is not None and (values is None or values.get("status") != "ok"):
        error, stage = died
        return record_failure(job_dir, error, "ProcessDied", stage, config=config, chash=chash)
    if values is None:
        return record_failure(job_dir, "the measurement process wrote no result", "NoResult", Stage.write,
                              config=config, chash=chash)
    return values


def _sweep_dir() -> Optional[Path]:
    """The sweep dir when this job is one of a multirun (its jobs share a device-idle floor), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if str(hydra_cfg.mode) == "RunMode.MULTIRUN" else None


def job_dirname(config: DictConfig, overrides: List[str]) -> str:
    """The dir name Hydra gives a sweep job with these overrides, when ``hydra.sweep.subdir`` is llem's
    default (llem.dirnames) or Hydra's override_dirname; else a name from the overrides' hash."""
    subdir = config.hydra.sweep._get_node("subdir")._value()
    opts = config.hydra.job.config.override_dirname
    if subdir == dirnames.SUBDIR:
        return dirnames.job_dirname(overrides, opts.exclude_keys)
    if subdir == "${hydra.job.override_dirname}":
        lines = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in opts.exclude_keys)
        return opts.item_sep.join(lines).replace("=", opts.kv_sep)
    return "invalid-" + hashlib.sha256("\0".join(overrides).encode()).hexdigest()[:12]


def fail_uncomposable(config: DictConfig, overrides: List[str], exc: Exception) -> None:
    """A sweep job whose config cannot be composed: a failed row in its own dir, and the sweep goes on."""
    job_dir = Path(config.hydra.sweep.dir) / job_dirname(config, overrides)
    error = " ".join(str(exc).split())  # Hydra's message, on one line
    from llem.sweep import SweepSummary

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
    record_failure(job_dir, error, type(exc).__name__, Stage.config, warnings=[f"overrides: {' '.join(overrides)}"])


def _set_outcome(job_dir: Path, outcome: str) -> None:
    tmp = job_dir / f".{OUTCOME}.{os.getpid()}"
    tmp.write_text(outcome + "\n")
    os.replace(tmp, job_dir / OUTCOME)
