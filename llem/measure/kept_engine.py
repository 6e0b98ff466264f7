"""The loaded engine a measurement process keeps between jobs of a sweep (``reuse_engine``), as the jobs on it
see it: who built it and when, how many jobs it served, the latest loaded-idle floor metered on it.

Which jobs may measure on it, and the process that holds it, are llem.deploy.reuse and llem.deploy.kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)


@dataclass
class KeptEngine:
    """The loaded engine in the measurement process, and what the jobs after its build need to know."""

    engine: Any
    build_job: str  # the job dir (name) that built it
    build_s: float
    build_cache: Any  # the BuildCache part of its build
    num_builds: Optional[int]
    jobs_served: int = 1
    loaded_idle: Any = None  # the WindowEnergy of the latest loaded-idle floor measured on it
    loaded_idle_rows: List[Dict[str, Any]] = field(default_factory=list)
    loaded_idle_at: float = 0.0  # time.time() at its end
    loaded_idle_job: str = ""
    loaded_idle_clean: bool = False

    def serve_next(self) -> Any:
        """One more job measures on this engine: its EngineReuse part."""
        from llem.results.row import EngineReuse

        self.jobs_served += 1
        log.info("measuring on the engine %s built (%.1f s; job %d on it): no load", self.build_job, self.build_s,
                 self.jobs_served)
        return EngineReuse(engine_reused=True, engine_build_s=self.build_s, engine_build_job=self.build_job,
                           num_engine_jobs=self.jobs_served, num_engine_builds=self.num_builds)

    def note_loaded_idle(self, baselines: Any, window_s: float, job: str) -> None:
        """The loaded-idle floor's age in ``baselines`` and, when an earlier job on this engine metered it, that job."""
        if self.loaded_idle is None or baselines.loaded_idle_power_w is None:
            return
        baselines.loaded_idle_age_s = max(0.0, time.time() - window_s - self.loaded_idle_at)
        if self.loaded_idle_job != job:
            baselines.loaded_idle_job = self.loaded_idle_job

    def recent_loaded_idle(self, reuse_s: float) -> Optional[Tuple[Any, List[Dict[str, Any]]]]:
        """The floor (and its samples) a later job may take instead of metering its own: clean, and metered
        within ``reuse_s``; else None."""
        if self.loaded_idle is None or not self.loaded_idle_clean or reuse_s <= 0:
            return None
        age_s = time.time() - self.loaded_idle_at
        if age_s > reuse_s:
            return None
        log.info("loaded-idle baseline reused: %.1f W, metered %.0f s ago by %s", self.loaded_idle.avg_power_w,
                 age_s, self.loaded_idle_job)
        return self.loaded_idle, self.loaded_idle_rows

    def keep_loaded_idle(self, idle: Any, rows: List[Dict[str, Any]], job: str, clean: bool) -> None:
        self.loaded_idle, self.loaded_idle_rows, self.loaded_idle_at = idle, rows, time.time()
        self.loaded_idle_job, self.loaded_idle_clean = job, clean
