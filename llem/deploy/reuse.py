"""One loaded engine for consecutive jobs of a sweep (``reuse_engine``): what is kept, and for whom.

A fresh process per job pays the engine's build every time (a vLLM job of the H200: ~40 s of start-up
with the compile cache hit, for a 10 s window). With ``reuse_engine=true`` (the default) the driver
keeps the measurement process (llem.deploy.kept), and the engine loaded in it, after a job that ended
ok; the next job measures on it when its engine's :meth:`~llem.backends.base.Engine.build_key` is the
same and the build holds its batch. Any other job stops the kept process first (its GPU memory is freed) and
builds its own. The rule, its trade-off and the columns that say what a job measured on are in
docs/sweeps.md.

A build is made for the largest ``build_capacity`` among the job that builds it and the jobs after it
in the sweep's order that share its key (:class:`SweepJobs`, filled by llem's sweeper), so that
``-m batch=1,8,32`` builds once: each job still keeps at most its own ``batch`` in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

LOOKAHEAD_JOBS = 10_000  # at most this many later jobs are composed to size a build


@dataclass(frozen=True)
class Reuse:
    """What a job asks of a kept engine: the same build key, and a build holding at least ``capacity``."""

    key: str
    capacity: Optional[int]
    build_for: Optional[int]  # the capacity to build for when this job builds (≥ capacity)

    def served_by(self, key: str, built_for: Optional[int]) -> bool:
        return key == self.key and (self.capacity is None or (built_for or 0) >= self.capacity)


class SweepJobs:
    """The sweep run in this process, as llem's sweeper launches it: every job's overrides, in order, and how
    to compose one into a typed config (None until a sweep sets it, e.g. a single run)."""

    jobs: List[Tuple[str, ...]] = []
    compose: Optional[Callable[[Sequence[str]], Any]] = None


def reuse_for(config: Any, device: str, overrides: Sequence[str]) -> Optional[Reuse]:
    """What this job asks of a kept engine, or None when it measures in a process of its own (reuse off,
    a server, an engine built per job, not in a process of its own)."""
    from llem.backends import engine_class

    key = _kept_key(config, device)
    if key is None:
        return None
    capacity = engine_class(config.backend.name).build_capacity(config)
    return Reuse(key, capacity, _largest_after(tuple(overrides), key, capacity, device))


def _kept_key(config: Any, device: str) -> Optional[str]:
    """The key of the kept engine a job may measure on: its engine's build key on its device; None where the
    job cannot measure on a kept engine (reuse off, in this process, behind a server, built per job)."""
    from llem.backends import engine_class

    if not config.reuse_engine or not config.isolate or config.server.mode != "none":
        return None
    key = engine_class(config.backend.name).build_key(config)
    return None if key is None else f"{device}:{key}"


def _largest_after(overrides: Tuple[str, ...], key: str, capacity: Optional[int], device: str) -> Optional[int]:
    """The largest build capacity among this job and the consecutive jobs after it with the same build key."""
    from llem.backends import engine_class

    jobs, compose = SweepJobs.jobs, SweepJobs.compose
    if capacity is None or compose is None or overrides not in jobs:
        return capacity
    largest = capacity
    start = jobs.index(overrides) + 1
    for later in jobs[start:start + LOOKAHEAD_JOBS]:
        try:
            cfg = compose(later)
            later_key = _kept_key(cfg, device)
        except Exception:  # a job that cannot be composed fails alone; it ends the run of this build
            break
        if later_key != key or cfg.cold_start:  # a cold job stops the kept engine and builds its own
            break
        largest = max(largest, engine_class(cfg.backend.name).build_capacity(cfg) or 0)
    if largest > capacity:
        log.info("the engine is built for %d sequences in flight: later jobs of the sweep measure on it", largest)
    return largest
