"""The measurement process: spawned for a job, stopped with its driver.

A job measures in a freshly spawned interpreter (a fresh CUDA context; all device memory freed
when it exits), or, with ``reuse_engine``, in the process an earlier job of the sweep left running
with its engine loaded (:class:`Kept`, llem.kept_engine). Either is tied to the job's parent so
that no measurement outlives the driver:

- it runs in its own process group, so a terminal's Ctrl-C reaches the parent only, and the parent
  stops the whole group (the engine's own worker processes included) before it says so once;
- on Linux it asks the kernel to kill it when the parent dies (``PR_SET_PDEATHSIG``), so even a
  parent killed with SIGKILL leaves no orphan that would write a result later;
- SIGINT or SIGTERM to the parent stops the measurement, writes nothing for the job (a rerun
  measures it again) and raises :class:`Interrupted`, which ``__main__`` turns into one line.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import sys
from contextlib import contextmanager
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


class _Running:
    proc: Any = None  # the measurement process of the job in progress
    stage: Any = None  # its shared stage index


def _stage_now() -> Optional[Stage]:
    return STAGES[_Running.stage.value] if _Running.stage is not None else None


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
def interruptible(job_dir: Path) -> Iterator[None]:
    """While a job runs, SIGINT and SIGTERM stop its measurement process and raise Interrupted."""
    def handler(signum, frame) -> None:
        stage = _stage_now()
        if _Running.proc is not None:
            stop(_Running.proc)
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


def _log_file() -> Optional[str]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _child(conn, config, device: str, stage, log_file: Optional[str], level: int, parent_pid: int,
           preload: bool) -> None:
    """Entry point of the measurement process (spawned): a fresh interpreter, a fresh CUDA context. It imports
    the engine (``preload``) while the parent meters the device-idle floor, then waits for the job."""
    _start_child(parent_pid)
    _logging_to(log_file, level)
    from llem.experiment import Experiment
    from llem.preload import preload_engine

    import_s = preload_engine(config, device) if preload else None
    try:
        job = conn.recv()
    except (EOFError, OSError):
        job = None  # the driver gave this job up, or went
    if job is not None:
        job_dir, idle, endpoint = job
        Experiment(config, Path(job_dir), device, idle, _stage_setter(stage), endpoint=endpoint,
                   import_s=import_s).run()
    _exit_now()


def _start_child(parent_pid: int) -> None:
    """What every measurement process does first: its own process group, death with its parent, Ctrl-C left
    to the parent (which stops the whole group), secrets scrubbed from what it prints."""
    os.setpgid(0, 0)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from llem import secrets

    secrets.install()


def _stage_setter(stage):
    def set_stage(s: Stage) -> None:
        stage.value = STAGES.index(s)

    return set_stage


def _died(proc, stage) -> Optional[Tuple[str, Stage]]:
    """(why a measurement process that has exited died, the stage it was in), or None if it exited cleanly."""
    where = STAGES[stage.value]
    if proc.exitcode == 0:
        return None
    if proc.exitcode is not None and proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        return f"the measurement process was killed by {sig} during {where.value}", where
    return f"the measurement process exited with code {proc.exitcode} during {where.value}", where


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


class Kept:
    """The driver's kept measurement process (``reuse_engine``): it holds a loaded engine between jobs."""

    proc: Any = None
    conn: Any = None
    stage: Any = None
    key: Optional[str] = None
    built_for: Optional[int] = None
    builds: int = 0  # engine builds this driver asked kept processes for
    hooked = False


def kept_serves(reuse) -> bool:
    """Whether the kept process (alive, holding an engine) can measure a job that asks ``reuse``."""
    return (reuse is not None and Kept.proc is not None and Kept.proc.is_alive()
            and reuse.served_by(Kept.key, Kept.built_for))


def stop_kept() -> None:
    """Close the kept engine and end its process (its device memory is freed); nothing if none is kept."""
    proc, conn = Kept.proc, Kept.conn
    Kept.proc = Kept.conn = Kept.stage = Kept.key = Kept.built_for = None
    if proc is None:
        return
    try:
        conn.send(None)  # the process closes its engine and exits
    except (OSError, ValueError):
        pass
    proc.join(STOP_GRACE_S)
    if proc.is_alive():
        stop(proc)
    conn.close()
    log.info("the kept engine was closed")


def start_kept(config, device: str, reuse) -> None:
    """Spawn the kept process for ``reuse`` unless one serves it: it imports the engine at once, beside the
    parent's device-idle floor, and builds it with its first job."""
    if kept_serves(reuse):
        return
    stop_kept()
    Kept.proc, Kept.conn, Kept.stage = _spawn(_kept_child, "llem-measure-kept", lambda conn, stage: (
        conn, stage, os.getpid(), config, device, _log_file(), logging.getLogger().level))
    if not Kept.hooked:  # registered after multiprocessing's own exit hook, so it runs first: no join hangs
        atexit.register(stop_kept)
        Kept.hooked = True
    Kept.key, Kept.built_for = reuse.key, reuse.build_for
    Kept.builds += 1
    _Running.proc, _Running.stage = Kept.proc, Kept.stage  # an interrupt during the floor stops it


def measure_kept(config, job_dir: Path, device: str, idle, reuse) -> Optional[Tuple[str, Stage]]:
    """Run the experiment in the kept process (started, and the engine built, when none serves ``reuse``);
    return (why it died, stage), or None. The process stays for the next job only if it kept its engine."""
    start_kept(config, device, reuse)
    proc, stage = Kept.proc, Kept.stage
    stage.value = 0
    _Running.proc, _Running.stage = proc, stage
    kept = False
    try:
        Kept.conn.send((config, str(job_dir), device, idle, _log_file(), logging.getLogger().level,
                        reuse.build_for, Kept.builds))
        kept = bool(Kept.conn.recv())  # blocks until the job ends; EOFError if the process died
    except (EOFError, OSError):
        pass
    finally:
        _Running.proc = _Running.stage = None
    if kept:
        return None
    proc.join(STOP_GRACE_S)  # it ends itself after a job that did not keep its engine
    if proc.is_alive():
        stop(proc)
    Kept.proc = Kept.conn = Kept.key = Kept.built_for = None
    return _died(proc, stage)


def _kept_child(conn, stage, parent_pid: int, first, device: str, log_file: Optional[str], level: int) -> None:
    """Entry point of a kept measurement process: it imports the engine of its first job (``first``, the
    config) at once, then runs jobs one after another on one loaded engine, until the driver says stop
    (None), a job does not keep its engine, or the driver goes."""
    _start_child(parent_pid)
    _logging_to(log_file, level)
    from llem.experiment import Experiment
    from llem.preload import preload_engine

    import_s = preload_engine(first, device)
    held = None
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        config, job_dir, device, idle, log_file, level, build_for, builds = job
        _logging_to(log_file, level)
        experiment = Experiment(config, Path(job_dir), device, idle, _stage_setter(stage), kept=held,
                                keep=(build_for, builds), import_s=import_s if held is None else None)
        experiment.run()
        held = experiment.kept
        try:
            conn.send(held is not None)
        except (OSError, ValueError):
            break
        if held is None:
            break
    if held is not None:
        try:
            held.engine.close()
        except Exception as exc:
            log.warning("engine close: %s", exc)
    _exit_now()


def _logging_to(log_file: Optional[str], level: int) -> None:
    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    handlers = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)


class Started:
    """A measurement process spawned ahead of its job (:func:`start_isolated`), waiting for it."""

    def __init__(self, proc, conn, stage) -> None:
        self.proc, self.conn, self.stage = proc, conn, stage


def start_isolated(config, device: str, preload: bool) -> Started:
    """Spawn the job's measurement process now; with ``preload`` it imports the engine at once, while the
    parent meters the device-idle floor. :func:`measure_isolated` gives it the job."""
    proc, conn, stage = _spawn(_child, "llem-measure", lambda conn, stage: (
        conn, config, device, stage, _log_file(), logging.getLogger().level, os.getpid(), preload))
    _Running.proc, _Running.stage = proc, stage
    return Started(proc, conn, stage)


def _spawn(target, name: str, args) -> Tuple[Any, Any, Any]:
    """Start a measurement process (spawned: a fresh interpreter) with a pipe and a shared stage index;
    ``args(child_conn, stage)`` gives its arguments. Returns (process, the driver's end of the pipe, stage)."""
    ctx = mp.get_context("spawn")
    stage = ctx.RawValue("i", 0)  # no lock: one writer, and a lock would leak a semaphore at exit
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=target, name=name, args=args(child_conn, stage))
    proc.start()
    child_conn.close()
    return proc, parent_conn, stage


def abandon(started: Optional[Started]) -> None:
    """Stop a measurement process started ahead of a job that will not run (its floor failed)."""
    if started is None:
        return
    try:
        started.conn.send(None)
    except (OSError, ValueError):
        pass
    started.proc.join(STOP_GRACE_S)
    if started.proc.is_alive():
        stop(started.proc)
    started.conn.close()
    _Running.proc = _Running.stage = None


def measure_isolated(config, job_dir: Path, device: str, idle, endpoint=None,
                     started: Optional[Started] = None) -> Optional[Tuple[str, Stage]]:
    """Run the experiment in a spawned process (``started`` ahead, or now); return (why it died, stage), or
    None if it exited cleanly."""
    started = started or start_isolated(config, device, preload=endpoint is None)
    _Running.proc, _Running.stage = started.proc, started.stage
    try:
        try:
            started.conn.send((str(job_dir), idle, endpoint))
        except (OSError, ValueError):
            pass  # it died already: its exit code says how
        started.proc.join()  # blocks in waitpid: no CPU spent while the measurement runs
    finally:
        _Running.proc = _Running.stage = None
        started.conn.close()
    return _died(started.proc, started.stage)
