"""No defunct process is left behind by a run.

A process whose parent dies first is handed to the nearest *subreaper* ancestor, or to PID 1; in a
container or VM whose PID 1 reaps slowly (or never), a stopped server's own workers and
multiprocessing's resource tracker stay ``<defunct>`` after llem is done. llem's entry point makes
itself a subreaper (Linux), so such orphans become its children, and reaps them: the stopped
server's tree when it stops, orphans of a job's processes when the job ends, the resource tracker
at exit. Children that a ``Popen`` or ``multiprocessing`` handle owns are left to that handle.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, List, Set

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants (Linux); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` now (empty when it is gone)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _reap_one(pid: int) -> bool:
    """True once ``pid`` is gone: reaped here, or not this process's to reap and no longer running."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: gone, or someone else's to reap
        import psutil

        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True


def reap(pids: Iterable[int], timeout_s: float = 10.0) -> List[int]:
    """Wait (bounded) for each of ``pids`` to end, reaping those that became this process's children;
    returns those still running at the deadline."""
    left = list(pids)
    deadline = time.monotonic() + timeout_s
    while left:
        left = [pid for pid in left if not _reap_one(pid)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if left:
        log.debug("processes still running after %.0f s: %s", timeout_s, left)
    return left


def reap_adopted(owned: Iterable[int] = ()) -> int:
    """Reap every defunct child that no handle owns (orphans this subreaper adopted); returns how many."""
    import multiprocessing

    import psutil

    keep: Set[int] = set(owned) | {p.pid for p in multiprocessing.active_children()}
    reaped = 0
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return 0
    for child in children:
        try:
            defunct = child.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if defunct and child.pid not in keep:
            try:
                os.waitpid(child.pid, os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped


def stop_resource_tracker(timeout_s: float = 5.0) -> None:
    """End multiprocessing's resource tracker and reap it, bounded (it would outlive this process
    otherwise): closing its pipe ends it once no other process holds the pipe."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if fd is None or pid is None:
        return
    try:
        os.close(fd)
    except OSError:
        return
    tracker._fd, tracker._pid = None, None
    reap([pid], timeout_s)
