"""One Hydra job: validate, skip if already done, measure in a fresh process, never crash the sweep.

The parent (this module) never opens a CUDA context: it measures the device-idle baseline,
then spawns the measurement process and waits for it (a blocking wait, no polling). Every
way a job can end leaves a ``results.parquet``: ``ok``, or ``failed`` with the error and the
stage it happened in — a bad config, an exception, or a measurement process that died.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from llem import environment, results
from llem.backends import engine_class
from llem.config import Config, Device, config_hash, flatten, to_config
from llem.energy.nvml import gpu_counts, visible_uuids
from llem.errors import ConfigError
from llem.experiment import DeviceIdle, Experiment, device_idle_baseline, summary_line

log = logging.getLogger(__name__)

OUTCOME = "outcome.txt"  # ok | skipped | failed: how this job's latest run ended
_STAGES = ["start", "workload", "check", "load", "warmup", "baseline", "measure", "prefill", "write"]


def _failed_row(cfg_tree: Dict[str, Any], error: str, error_type: str, stage: str,
                chash: Optional[str]) -> Dict[str, Any]:
    row = {"status": "failed", "error": environment.scrub(error), "error_type": error_type, "error_stage": stage,
           "config_hash": chash, "warnings": []}
    row.update({f"cfg.{k}": v for k, v in flatten(cfg_tree).items()})
    row.update(environment.capture([]))
    return row


def _tree(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False, enum_to_str=True)


def resolve_device(config: Config) -> Tuple[str, Optional[str]]:
    """(cpu or cuda, a problem) decided without touching CUDA: NVML tells which GPUs are visible.

    device=cuda with no visible GPU is a problem (the job refuses to measure); device=auto then
    measures on the CPU, with a warning when the host has GPUs that were hidden from the job.
    """
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


@contextmanager
def gpu_lock(uuids: List[str]):
    """Hold an exclusive lock per physical GPU (by UUID) on this host while a job measures, so jobs
    that a launcher starts together never share a GPU's energy counter."""
    import fcntl

    handles = []
    try:
        for uuid in sorted(uuids):
            fh = open(Path(tempfile.gettempdir()) / f"llem-gpu-{uuid}.lock", "w")
            handles.append(fh)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for GPU %s: another llem job is measuring on it", uuid)
                fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        for fh in handles:
            fh.close()


def _log_file() -> Optional[str]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _child(config: Config, job_dir: str, device: str, idle: DeviceIdle, stage, log_file: Optional[str],
           level: int) -> None:
    """Entry point of the measurement process (spawned): a fresh interpreter, a fresh CUDA context."""
    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    handlers = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)

    def set_stage(name: str) -> None:
        stage.value = _STAGES.index(name)

    Experiment(config, Path(job_dir), device, idle, set_stage).run()
    _exit_now()


def _exit_now() -> None:
    """End the measurement process without the interpreter's teardown (torch, CUDA and engine
    modules take ~1 s to unwind; every file is already written): flush the logs, stop any child
    process the engine left behind, exit."""
    import psutil

    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    os._exit(0)


def _measure_isolated(config: Config, job_dir: Path, device: str, idle: DeviceIdle) -> Optional[Tuple[str, str]]:
    """Run the experiment in a spawned process; return (why it died, stage), or None if it exited cleanly."""
    ctx = mp.get_context("spawn")
    stage = ctx.Value("i", 0)
    proc = ctx.Process(target=_child, name="llem-measure",
                       args=(config, str(job_dir), device, idle, stage, _log_file(), logging.getLogger().level))
    proc.start()
    proc.join()  # blocks in waitpid: no CPU spent while the measurement runs
    where = _STAGES[stage.value]
    if proc.exitcode == 0:
        return None
    if proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        return f"the measurement process was killed by {sig} during {where}", where
    return f"the measurement process exited with code {proc.exitcode} during {where}", where


def run(cfg: DictConfig) -> Tuple[Dict[str, Any], float]:
    """Run one job in Hydra's job dir. Returns its result row and the sweeper objective; never
    raises for a job-level failure."""
    from hydra.core.hydra_config import HydraConfig

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        config = to_config(cfg)
        engine_class(config.backend.name).validate_config(config)
    except ConfigError as exc:
        log.error("invalid config: %s", exc)
        row = _failed_row(_tree(cfg), str(exc), "ConfigError", "config", None)
        results.write_result(row, job_dir)
        _set_outcome(job_dir, "failed")
        return row, objective(row, None)
    row = run_config(cfg, config, job_dir)
    return row, objective(row, config)


def run_config(cfg: DictConfig, config: Config, job_dir: Path) -> Dict[str, Any]:
    """Resume-skip, baseline, measure (isolated or not), and make sure a result row exists."""
    chash = config_hash(config)
    previous = results.read_result(job_dir)
    if previous and previous.get("status") == "ok" and previous.get("config_hash") == chash:
        log.info("skipped: %s already holds a successful result (config_hash %s)", job_dir, chash)
        _set_outcome(job_dir, "skipped")
        return previous

    (job_dir / results.RESULTS).unlink(missing_ok=True)  # a stale failed/other-config row must not linger
    device, problem = resolve_device(config)
    log.info("job %s: backend=%s model=%s batch=%d device=%s", chash, config.backend.name, config.model.name,
             config.batch, device)
    if device == "cuda" and problem:
        log.error("%s", problem)
        row = _failed_row(_tree(cfg), problem, "DeviceError", "check", chash)
        results.write_result(row, job_dir)
        _set_outcome(job_dir, "failed")
        return row
    gpus_needed = engine_class(config.backend.name).gpus_required(config.backend)
    with gpu_lock(visible_uuids(gpus_needed) if device == "cuda" else []):
        row = _measure(cfg, config, chash, job_dir, device, gpus_needed, problem)
    _set_outcome(job_dir, "ok" if row.get("status") == "ok" else "failed")
    log.info("%s → %s", summary_line(row), job_dir)
    return row


def _measure(cfg: DictConfig, config: Config, chash: str, job_dir: Path, device: str, gpus_needed: int,
             problem: Optional[str]) -> Dict[str, Any]:
    if config.cooldown_s > 0:
        log.info("cooldown %.1f s", config.cooldown_s)
        time.sleep(config.cooldown_s)
    idle = DeviceIdle()
    if device == "cuda" and config.baseline.device_idle_s > 0:
        idle = device_idle_baseline(config, gpus_needed)
    if problem:
        idle.warnings.append(problem)
    if config.isolate:
        died = _measure_isolated(config, job_dir, device, idle)
        row = results.read_result(job_dir)
        if died is not None and (row is None or row.get("status") != "ok"):
            error, stage = died
            row = _failed_row(_tree(cfg), error, "ProcessDied", stage, chash)
            results.write_result(row, job_dir)
    else:
        row = Experiment(config, job_dir, device, idle).run()
    if row is None:
        row = _failed_row(_tree(cfg), "no result was written", "NoResult", "write", chash)
        results.write_result(row, job_dir)
    return row


def _set_outcome(job_dir: Path, outcome: str) -> None:
    tmp = job_dir / f".{OUTCOME}.{os.getpid()}"
    tmp.write_text(outcome + "\n")
    os.replace(tmp, job_dir / OUTCOME)


class SweepSummary(Callback):
    """Hydra callback: at the end of a sweep, count how its jobs ended (works for every launcher,
    since each job leaves its outcome in its own directory)."""

    failures = 0  # read by __main__ after the sweep: non-zero exit when any job failed

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        failed = []
        for path in sorted(Path(config.hydra.sweep.dir).glob(f"**/{OUTCOME}")):
            if path.stat().st_mtime + 1 < self.started:
                continue  # a job of an earlier run of this sweep dir, not re-run now
            outcome = path.read_text().strip()
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "failed":
                failed.append(path.parent.name)
        log.info("sweep %s: %d ok, %d skipped, %d failed", config.hydra.sweep.dir, counts["ok"], counts["skipped"],
                 counts["failed"])
        for name in failed:
            log.info("  failed: %s", name)
        if counts["failed"]:
            SweepSummary.failures = counts["failed"]
        try:  # the sweep's index makes `python -m llem.aggregate` fast on large sweeps
            from llem.aggregate.collect import collect

            collect([Path(config.hydra.sweep.dir)])
        except Exception as exc:
            log.warning("sweep index not written (aggregate will read every job): %s", exc)


def objective(row: Dict[str, Any], config: Optional[Config]) -> float:
    """The value a sweeper optimises: the objective metric, or the worst value (never 0) when the
    job failed, the metric is null, or a bound is broken."""
    metric = config.objective.metric if config else "j_per_output_token"
    minimize = config is None or config.objective.direction == "minimize"
    worst = float("inf") if minimize else float("-inf")
    if row.get("status") != "ok":
        log.info("objective %s: job failed → %s", metric, worst)
        return worst
    value = row.get(metric)
    if value is None or value != value:
        log.info("objective %s is null (%s) → %s", metric, row.get("energy_null_reason") or "not measured", worst)
        return worst
    for column, bound in (config.objective.bounds.items() if config else ()):
        seen = row.get(column)
        limit = float(bound.strip()[2:])
        broken = seen is None or (seen > limit if bound.strip().startswith("<=") else seen < limit)
        if broken:
            log.warning("objective: %s=%s breaks the bound %s → %s", column, seen, bound, worst)
            return worst
    return float(value)
