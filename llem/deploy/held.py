"""What outlives a job: the driver's one resident, and its counters.

A job leaves behind at most one thing that holds the GPUs for the next job: a measurement process with its
engine still loaded (``reuse_engine``), or a launched server (later also a running container). Two residents
never coexist, because each holds the GPUs and would spoil the other's floor and window. :class:`Held` is that
slot, made once by the driver (``llem.__main__``) and handed to every job it runs:

- a deployment asks for the resident by its *key* (what makes two jobs' residents the same): the same key,
  healthy and fitting → it is reused; anything else → the old one is stopped and the job starts its own. A
  resident with the right key that is no longer healthy (a kept process that died, a server that stopped
  answering its health path) is said once in the log as it is replaced;
- it also names the measurement process of the job in progress, so that an interrupt stops it first;
- it counts, per driver, the servers started and the engines built (result columns);
- at exit or on an interrupt it stops everything (also from ``atexit``: a submitit worker ends by exiting),
  and it lists the processes it owns, which the reaper must leave alone.
"""

from __future__ import annotations

import atexit
import logging
from abc import ABC, abstractmethod
from typing import Any, Callable, List, Optional

log = logging.getLogger(__name__)


class Resident(ABC):
    """Something a job started that may serve later jobs of the driver (a kept engine's process, a server)."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether it can still serve a job."""

    def healthy(self) -> bool:
        """Whether it can serve the next job now (checked before each reuse; bounded): alive, by default."""
        return self.alive()

    @abstractmethod
    def stop(self) -> None:
        """Stop it and free what it holds (device memory, a port); bounded, never raises."""

    def pids(self) -> List[int]:
        """The processes it owns (their handles reap them: never strays for the reaper)."""
        return []


class Held:
    """The driver's resident (at most one, with its key), the job's running measurement, per-driver counters."""

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.resident: Optional[Resident] = None
        self.running: Optional[Any] = None  # the job's measurement process (llem.deploy.process.Running)
        self.server_starts = 0  # servers started by this driver
        self.engine_builds = 0  # engine builds this driver asked kept processes for
        self._hooked = False

    def reuse(self, key: str, fits: Callable[[Any], bool] = lambda resident: True) -> Optional[Any]:
        """The resident when it has ``key``, is healthy and ``fits``; else None, with any other resident stopped
        (it holds the GPUs this job needs)."""
        res = self.resident
        if res is not None and self.key == key:
            if not res.healthy():
                log.warning("the %s kept from an earlier job is not healthy: it is stopped and replaced",
                            type(res).__name__)
            elif fits(res):
                return res
        self.release()
        return None

    def hold(self, key: str, resident: Resident) -> None:
        """Keep ``resident`` for later jobs (the slot must be empty: :meth:`reuse` or :meth:`release` first)."""
        if self.resident is not None and self.resident is not resident:
            self.release()
        self.key, self.resident = key, resident
        if not self._hooked:  # after multiprocessing's own exit hook, so it runs first: no join hangs at exit
            atexit.register(self.stop_all)
            self._hooked = True

    def forget(self) -> None:
        """The resident ended by itself (its job did not keep it): drop it without stopping it again."""
        self.key = self.resident = None

    def release(self) -> None:
        """Stop the resident, if any (a job that cannot use it, the end of a single run or of a sweep)."""
        res, self.key, self.resident = self.resident, None, None
        if res is not None:
            res.stop()

    def stop_all(self) -> None:
        """Stop everything this driver still runs: the measurement in progress, then the resident."""
        running, self.running = self.running, None
        if running is not None:
            running.stop()
        self.release()

    def pids(self) -> List[int]:
        """The processes this driver owns and reaps itself."""
        return self.resident.pids() if self.resident is not None else []
