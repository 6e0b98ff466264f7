"""Advisory locks (``flock``) that keep two llem processes from measuring into each other.

- one per physical GPU (by UUID, on the host): jobs a launcher starts together never share a
  GPU's energy counter;
- one per job dir: two processes never run (and write) the same job;
- one per sweep dir, held by the sweep's driver for the whole sweep: a second sweep on the same
  dir is refused instead of running every job again beside the first.

The kernel drops a lock when its holder exits, however it exits, so a crash never leaves one behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List, Optional

log = logging.getLogger(__name__)

JOB_LOCK = ".llem-job.lock"
SWEEP_LOCK = ".llem-sweep.lock"


def try_lock(path: Path) -> Optional[IO]:
    """The open, exclusively locked file at ``path``, or None when another process holds it. The
    holder's pid is written into it, so a refusal can name who holds it."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file says (for messages)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another process"


@contextmanager
def job_lock(job_dir: Path) -> Iterator[bool]:
    """Hold the job dir's lock while the job runs; yields False (and holds nothing) if it is taken."""
    job_dir.mkdir(parents=True, exist_ok=True)
    fh = try_lock(job_dir / JOB_LOCK)
    try:
        yield fh is not None
    finally:
        if fh is not None:
            fh.close()


@contextmanager
def gpu_lock(uuids: List[str]) -> Iterator[None]:
    """Hold an exclusive lock per physical GPU (by UUID) on this host while a job measures, so jobs
    that a launcher starts together never share a GPU's energy counter."""
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
