"""Advisory locks (``flock``) that keep two llem processes from measuring into each other.

- one per physical GPU (by UUID, on the host): jobs a launcher starts together never share a
  GPU's energy counter;
- one per job dir: two processes never run (and write) the same job;
- one per sweep dir, held by the sweep's driver for the whole sweep: a second sweep on the same
  dir is refused instead of running every job again beside the first;
- one per host, shared or exclusive: a job that uses the host itself (device=cpu, or the
  codecarbon meter, which meters the whole machine) measures alone; jobs that use only their
  own GPUs share it and may run side by side. Each holder leaves a note (pid, job dir, since,
  until) beside it, so a waiting job can say whom it waits for and a measured window can say
  which jobs overlapped it (the ``shared_host`` flag);
- one per TCP port a launched server listens on, held by the llem process that started the server until
  it stops: two llem processes choosing a port at once (a launcher's jobs, each with its own server) never
  pick the same one, though nothing listens there yet while either server starts up.

The per-GPU and per-host locks live in one folder of the host whatever a process's TMPDIR
(SLURM sites often give each job its own), shared by all users. The kernel drops a lock when its
holder exits, however it exits, so a crash never leaves one behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

log = logging.getLogger(__name__)

JOB_LOCK = ".llem-job.lock"
SWEEP_LOCK = ".llem-sweep.lock"
HOST_LOCK = "llem-host.lock"
HOST_NOTE = "llem-host-"  # + pid-ms.json: one note per job that held the host lock
SHARED_DIRS = ("/var/tmp",)  # not TMPDIR, not /tmp: SLURM's job_container/tmpfs gives each job its own


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
def gpu_lock(uuids: List[str], directory: Optional[Path] = None) -> Iterator[None]:
    """Hold an exclusive lock per physical GPU (by UUID) on this host while a job measures, so jobs
    that a launcher starts together never share a GPU's energy counter."""
    folder = directory or lock_dir()
    fds = []
    try:
        for uuid in sorted(uuids):
            fd = _lock_fd(folder / f"llem-gpu-{uuid}.lock")
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for GPU %s: another llem job is measuring on it", uuid)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def port_lock(port: int) -> Optional[int]:
    """A held lock (its descriptor: close it to release) on TCP ``port`` of this host, or None when another llem
    process holds it. In the host's own folder whatever ``LLEM_LOCK_DIR`` says: ports belong to the host, not
    to a test worker or a container's view of the locks."""
    fd = _lock_fd(_host_folder() / f"llem-port-{port}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_dir() -> Path:
    """The host's lock folder, the same for every llem process and user of this machine:
    ``/var/tmp/llem-locks`` (world-writable and sticky, like /tmp), else the temp dir.
    ``LLEM_LOCK_DIR`` names another (containers sharing a host folder; test workers that must not
    wait on each other)."""
    chosen = os.environ.get("LLEM_LOCK_DIR")
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return _host_folder()


def _host_folder() -> Path:
    """``/var/tmp/llem-locks``, shared by every process and user of the host, else the temp dir."""
    for base in SHARED_DIRS:
        folder = Path(base) / "llem-locks"
        try:
            folder.mkdir(exist_ok=True)
            if folder.stat().st_uid == os.getuid():
                folder.chmod(0o1777)  # mkdir's mode is cut by the umask: every user may add a lock
            if os.access(folder, os.W_OK | os.X_OK):
                return folder
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def _lock_fd(path: Path) -> int:
    """A descriptor of ``path`` to flock, the file created writable by every user. Another user's
    existing file is opened read-only (enough for flock; a sticky folder refuses O_CREAT on it)."""
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return os.open(path, os.O_RDWR)
        os.fchmod(fd, 0o666)
        return fd
    except PermissionError:
        return os.open(path, os.O_RDONLY)


@dataclass
class HostUse:
    """One job's hold on the host lock, as its note says (times: seconds since the epoch)."""

    pid: int
    job_dir: str
    exclusive: bool  # it uses the host itself (device=cpu, codecarbon); else its GPUs only
    since: float
    until: Optional[float] = None  # None while it holds the lock
    start: Optional[str] = None  # the process's start time (Linux), so a reused pid is not taken for it

    def describe(self) -> str:
        uses = "CPU or host meters" if self.exclusive else "its GPUs only"
        return f"{self.job_dir} (pid {self.pid}, {uses})"

    def live(self) -> bool:
        if self.until is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: alive
        return self.start is None or self.start == _proc_start(self.pid)


def _proc_start(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _notes(folder: Path) -> List[Tuple[Path, HostUse]]:
    notes = []
    for path in folder.glob(f"{HOST_NOTE}*.json"):
        try:
            use = HostUse(**json.loads(path.read_text()))
            if use.until is None and not use.live():
                use.until = path.stat().st_mtime  # its job died without closing it
        except (OSError, ValueError, TypeError):
            continue  # being replaced, or removed meanwhile
        notes.append((path, use))
    return sorted(notes, key=lambda n: n[1].since)


def host_uses(directory: Optional[Path] = None) -> List[HostUse]:
    """The notes beside the host lock: jobs holding it now, and those that ended while a job that still
    holds it was running (older ones are removed)."""
    return [use for _, use in _notes(directory or lock_dir())]


def _write_note(path: Path, use: HostUse) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(use)))
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _prune(folder: Path) -> None:
    """Remove the notes no live holder can have overlapped: they ended before every live one began."""
    notes = _notes(folder)
    first_live = min((u.since for _, u in notes if u.until is None), default=float("inf"))
    for path, use in notes:
        if use.until is not None and use.until < first_live:
            try:
                path.unlink()
            except OSError:
                pass  # another user's note (a sticky folder), or gone already


@contextmanager
def host_lock(job_dir: Path, exclusive: bool, directory: Optional[Path] = None) -> Iterator[None]:
    """Hold the host lock while a job measures: exclusive for a job that uses the host itself, shared
    for one that uses only its GPUs, with this job's note beside it. Where no lock can be had, the job
    runs unguarded, noted where a note can be written, so an overlap is still flagged."""
    folder = directory or lock_dir()
    try:
        fd: Optional[int] = _lock_fd(folder / HOST_LOCK)
    except OSError as exc:
        log.warning("no host lock (%s): this job is not kept apart from other llem jobs on this host", exc)
        fd = None
    try:
        if fd is not None:
            _take(fd, folder, exclusive)
        use = HostUse(os.getpid(), str(job_dir), exclusive, time.time(), start=_proc_start(os.getpid()))
        note = folder / f"{HOST_NOTE}{use.pid}-{int(use.since * 1000)}.json"
        try:
            _write_note(note, use)
        except OSError as exc:
            log.warning("no host lock note (%s): an overlap with this job cannot be seen", exc)
        try:
            yield
        finally:
            use.until = time.time()
            try:
                _write_note(note, use)
                _prune(folder)
            except OSError as exc:
                log.debug("host lock note: %s", exc)
    finally:
        if fd is not None:
            os.close(fd)


def _take(fd: int, folder: Path, exclusive: bool) -> None:
    """flock the host lock, saying whom it waits for when it must wait, and for how long it waited."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holders = "; ".join(u.describe() for u in host_uses(folder) if u.until is None) or "another llem job"
    if exclusive:
        log.info("waiting for the host: this job uses its CPU or meters, and it is in use by %s", holders)
    else:
        log.info("waiting for the host: it is in use by %s, which uses its CPU or meters", holders)
    t0 = time.time()
    fcntl.flock(fd, mode)
    log.info("waited %.1f s for the host", time.time() - t0)


def host_overlaps(job_dir: Path, t0: float, t1: float, directory: Optional[Path] = None
                  ) -> List[Tuple[HostUse, float]]:
    """Other jobs that held the host during [t0, t1] (epoch s) while this job's note was open, where
    either uses the host itself, each with the seconds it overlapped (jobs on their own GPUs only may
    run side by side). Empty for a job without a note (one not run through the job's lock)."""
    try:
        uses = host_uses(directory)
    except OSError:
        return []
    mine = [u for u in uses if u.job_dir == str(job_dir) and u.since <= t1 and (u.until is None or u.until >= t0)]
    if not mine:
        return []
    exclusive = any(u.exclusive for u in mine)
    out = []
    for use in uses:
        if use.job_dir == str(job_dir) or not (exclusive or use.exclusive):
            continue
        overlap = min(t1, use.until if use.until is not None else t1) - max(t0, use.since)
        if overlap > 0:
            out.append((use, overlap))
    return out
