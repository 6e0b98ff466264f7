"""The engine an earlier job of the sweep left loaded (``reuse_engine``): a measurement process that runs
jobs one after another on one built engine, held by the driver between them.

Which jobs it serves is llem.deploy.reuse (the build key, and a build large enough). A job it serves
measures on it with the floor the sweep metered before it was built (llem.deploy.floors); any other job
stops it first. A job that does not keep its engine (it failed, or its engine cannot be kept) ends the
process with it; the next job of the key spawns and builds again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from llem.deploy import floors
from llem.deploy.held import Held, Resident
from llem.deploy.local import Local, row_after
from llem.deploy.process import (
    STOP_GRACE_S,
    Running,
    died,
    dismiss,
    exit_now,
    log_file,
    logging_to,
    spawn,
    stage_setter,
    start_child,
    stop,
)
from llem.deploy.reuse import Reuse
from llem.energy.idle import DeviceIdle
from llem.results.row import Stage

log = logging.getLogger(__name__)


class KeptProcess(Resident):
    """The driver's kept measurement process, and the capacity its engine is (or will be) built for."""

    def __init__(self, proc: Any, conn: Any, stage: Any, built_for: Optional[int]) -> None:
        self.proc, self.conn, self.stage, self.built_for = proc, conn, stage, built_for

    def alive(self) -> bool:
        return self.proc.is_alive()

    def pids(self) -> List[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        """Close the kept engine and end its process (its device memory is freed)."""
        dismiss(self.proc, self.conn)  # the process closes its engine and exits
        log.info("the kept engine was closed")


def start_kept(config: Any, device: str, reuse: Reuse, held: Held) -> KeptProcess:
    """The kept process serving ``reuse``: the one held, or a new one (any other resident stopped first) that
    imports the engine at once, beside the parent's device-idle floor, and builds it with its first job."""
    kept = held.reuse(reuse.key, lambda res: reuse.served_by(reuse.key, res.built_for))
    if kept is not None:
        return kept
    proc, conn, stage = spawn(_kept_child, "llem-measure-kept", lambda conn, stage: (
        conn, stage, os.getpid(), config, device, log_file(), logging.getLogger().level))
    kept = KeptProcess(proc, conn, stage, reuse.build_for)
    held.hold(reuse.key, kept)
    held.engine_builds += 1
    held.running = Running(proc, stage)  # an interrupt during the floor stops it
    return kept


def measure_kept(config: Any, job_dir: Path, device: str, idle: DeviceIdle, reuse: Reuse,
                 held: Held) -> Optional[Tuple[str, Stage]]:
    """Run the experiment in the kept process (started, and the engine built, when none serves ``reuse``);
    return (why it died, stage), or None. The process stays for the next job only if it kept its engine."""
    kept = start_kept(config, device, reuse, held)
    kept.stage.value = 0
    held.running = Running(kept.proc, kept.stage)
    keeps = False
    try:
        kept.conn.send((config, str(job_dir), device, idle, log_file(), logging.getLogger().level,
                        reuse.build_for, held.engine_builds))
        keeps = bool(kept.conn.recv())  # blocks until the job ends; EOFError if the process died
    except (EOFError, OSError):
        pass
    finally:
        held.running = None
    if keeps:
        return None
    kept.proc.join(STOP_GRACE_S)  # it ends itself after a job that did not keep its engine
    if kept.proc.is_alive():
        stop(kept.proc)
    held.forget()
    return died(kept.proc, kept.stage)


class Kept(Local):
    """A job of a sweep measured on the engine kept from the job before it, or on one it builds and keeps."""

    def __init__(self, place: Any, held: Held, reuse: Reuse) -> None:
        super().__init__(place, held)
        self.reuse = reuse

    def start(self) -> DeviceIdle:
        p = self.place
        kept = self.held.reuse(self.reuse.key, lambda res: self.reuse.served_by(self.reuse.key, res.built_for))
        if kept is not None:  # it holds the GPUs: the floor the sweep took before its build, while recent
            idle = floors.for_kept(p.config, p.gpus_needed, p.device, p.sweep_dir)
            if idle is not None:
                self.started_cold = False
                return idle
            self.held.release()
        start_kept(p.config, p.device, self.reuse, self.held)
        self.started_cold = True  # a new kept process: the engine is built with this job
        try:
            return self.device_idle()
        except BaseException:
            self.held.running = None
            self.held.release()
            raise

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        p = self.place
        return row_after(p, measure_kept(p.config, p.job_dir, p.device, idle, self.reuse, self.held))


def _kept_child(conn, stage, parent_pid: int, first, device: str, log_to: Optional[str], level: int) -> None:
    """Entry point of a kept measurement process: it imports the engine of its first job (``first``, the
    config) at once, then runs jobs one after another on one loaded engine, until the driver says stop
    (None), a job does not keep its engine, or the driver goes."""
    start_child(parent_pid)
    logging_to(log_to, level)
    from llem.measure.experiment import Experiment
    from llem.measure.preload import preload_engine

    import_s = preload_engine(first, device)
    engine = None
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        config, job_dir, device, idle, log_to, level, build_for, builds = job
        logging_to(log_to, level)
        experiment = Experiment(config, Path(job_dir), device, idle, stage_setter(stage), kept=engine,
                                keep=(build_for, builds), import_s=import_s if engine is None else None)
        experiment.run()
        engine = experiment.kept
        try:
            conn.send(engine is not None)
        except (OSError, ValueError):
            break
        if engine is None:
            break
    if engine is not None:
        try:
            engine.engine.close()
        except Exception as exc:
            log.warning("engine close: %s", exc)
    exit_now()
