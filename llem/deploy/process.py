"""Measurement processes: spawned for a job, tied to their driver, stopped on an interrupt.

A job measures in a freshly spawned interpreter (a fresh CUDA context; all device memory freed when it
exits), or in the process an earlier job left running with its engine loaded (llem.deploy.kept). Either is
tied to the job's parent so that no measurement outlives the driver:

- it runs in its own process group, so a terminal's Ctrl-C reaches the parent only, and the parent
  stops the whole group (the engine's own worker processes included) before it says so once;
- on Linux it asks the kernel to kill it when the parent dies (``PR_SET_PDEATHSIG``), so even a
  parent killed with SIGKILL leaves no orphan that would write a result later;
- SIGINT or SIGTERM to the parent stops the measurement (the driver's ``Held.running``), writes nothing
  for the job (a rerun measures it again) and raises :class:`Interrupted`, which ``__main__`` turns into
  one line.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from llem.results.row import Stage

log = logging.getLogger(__name__)

STAGES = list(Stage)
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached a job: its measurement was stopped and nothing was written for it."""

    def __init__(self, signal_name: str, job_dir: Optional[Path], stage: Optional[Stage]) -> None:
        super().__init__(f"{signal_name} during {stage.value if stage else 'the job'} of {job_dir}")
        self.signal_name, self.job_dir, self.stage = signal_name, job_dir, stage


@dataclass
class Running:
    """The measurement process of the job in progress and its shared stage index: the driver's ``Held.running``,
    which an interrupt stops first."""

    proc: Any
    stage: Any

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: Any) -> None:
    """Stop a measurement process and its process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        if not proc.is_alive():
            return
        try:
            os.killpg(proc.pid, sig)  # the group: the engine's own processes too
        except OSError:
            try:
                os.kill(proc.pid, sig)  # not yet in its own group
            except ProcessLookupError:
                return
        proc.join(wait_s)


@contextmanager
def interruptible(job_dir: Path, held: Any) -> Iterator[None]:
    """While a job runs, SIGINT and SIGTERM stop its measurement process (``held.running``) and raise
    Interrupted."""
    def handler(signum, frame) -> None:
        running = held.running
        stage = STAGES[running.stage.value] if running is not None else None
        if running is not None:
            stop(running.proc)
        raise Interrupted(signal.Signals(signum).name, job_dir, stage)

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (a launcher running jobs in threads): default handling
        old = {}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when its parent dies; elsewhere best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def log_file() -> Optional[str]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _child(conn, config, device: str, stage, log_file: Optional[str], level: int, parent_pid: int,
           preload: bool) -> None:
    """Entry point of the measurement process (spawned): a fresh interpreter, a fresh CUDA context. It imports
    the engine (``preload``) while the parent meters the device-idle floor, then waits for the job."""
    start_child(parent_pid)
    logging_to(log_file, level)
    from llem.measure.experiment import Experiment
    from llem.measure.preload import preload_engine

    import_s = preload_engine(config, device) if preload else None
    try:
        job = conn.recv()
    except (EOFError, OSError):
        job = None  # the driver gave this job up, or went
    if job is not None:
        job_dir, idle, endpoint = job
        Experiment(config, Path(job_dir), device, idle, stage_setter(stage), endpoint=endpoint,
                   import_s=import_s).run()
    exit_now()


def start_child(parent_pid: int) -> None:
    """What every measurement process does first: its own process group, death with its parent, Ctrl-C left
    to the parent (which stops the whole group), secrets scrubbed from what it prints."""
    os.setpgid(0, 0)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from llem.support import secrets

    secrets.install()


def stage_setter(stage):
    def set_stage(s: Stage) -> None:
        stage.value = STAGES.index(s)

    return set_stage


def died(proc, stage) -> Optional[Tuple[str, Stage]]:
    """(why a measurement process that has exited died, the stage it was in), or None if it exited cleanly."""
    where = STAGES[stage.value]
    if proc.exitcode == 0:
        return None
    if proc.exitcode is not None and proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        return f"the measurement process was killed by {sig} during {where.value}", where
    return f"the measurement process exited with code {proc.exitcode} during {where.value}", where


def exit_now() -> None:
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


def logging_to(log_file: Optional[str], level: int) -> None:
    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    handlers = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)


class Started:
    """A measurement process spawned ahead of its job (:func:`start_isolated`), waiting for it."""

    def __init__(self, proc, conn, stage) -> None:
        self.proc, self.conn, self.stage = proc, conn, stage


def start_isolated(config, device: str, preload: bool, held: Any) -> Started:
    """Spawn the job's measurement process now; with ``preload`` it imports the engine at once, while the
    parent meters the device-idle floor. :func:`measure_isolated` gives it the job."""
    proc, conn, stage = spawn(_child, "llem-measure", lambda conn, stage: (
        conn, config, device, stage, log_file(), logging.getLogger().level, os.getpid(), preload))
    held.running = Running(proc, stage)
    return Started(proc, conn, stage)


def spawn(target, name: str, args) -> Tuple[Any, Any, Any]:
    """Start a measurement process (spawned: a fresh interpreter) with a pipe and a shared stage index;
    ``args(child_conn, stage)`` gives its arguments. Returns (process, the driver's end of the pipe, stage)."""
    ctx = mp.get_context("spawn")
    stage = ctx.RawValue("i", 0)  # no lock: one writer, and a lock would leak a semaphore at exit
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=target, name=name, args=args(child_conn, stage))
    proc.start()
    child_conn.close()
    return proc, parent_conn, stage


def abandon(started: Optional[Started], held: Any) -> None:
    """Stop a measurement process started ahead of a job that will not run (its floor failed)."""
    if started is None:
        return
    dismiss(started.proc, started.conn)
    held.running = None


def dismiss(proc: Any, conn: Any) -> None:
    """Tell a waiting measurement process there is no (more) work: it exits by itself; stopped after the grace
    period if it does not."""
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    proc.join(STOP_GRACE_S)
    if proc.is_alive():
        stop(proc)
    conn.close()


def measure_isolated(config, job_dir: Path, device: str, idle, held: Any, endpoint=None,
                     started: Optional[Started] = None) -> Optional[Tuple[str, Stage]]:
    """Run the experiment in a spawned process (``started`` ahead, or now); return (why it died, stage), or
    None if it exited cleanly."""
    started = started or start_isolated(config, device, endpoint is None, held)
    held.running = Running(started.proc, started.stage)
    try:
        try:
            started.conn.send((str(job_dir), idle, endpoint))
        except (OSError, ValueError):
            pass  # it died already: its exit code says how
        started.proc.join()  # blocks in waitpid: no CPU spent while the measurement runs
    finally:
        held.running = None
        started.conn.close()
    return died(started.proc, started.stage)
