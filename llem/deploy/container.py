"""The engine inside a container image (``runtime=docker|podman``), without a server: the measurement process
runs in llem's image of the engine, and the client-less measurement writes into the job dir through a mount.

A persistent container (``sleep infinity`` under ``--init``) is started per *key* — the runtime, the image (by
its content id), the mounts, the GPUs, the user and ``runtime.args`` — and held by the driver as its resident
(llem.deploy.held), so consecutive jobs with the same key run in it (``runtime.reuse``); any other key stops
it (``rm --force``) and starts its own. Starting it is load, timed (``container_start_s``), never in a window.
Each job runs ``<runtime> exec <container> python -m llem.deploy.inside <job_dir>/.llem-job.pkl`` in the
foreground, as the host's user: the job file holds what a spawned measurement process gets (config, device,
device-idle floor, the container's facts); the inside writes the row, and its stage into a small file so that
a death is reported with its stage. What it prints goes, scrubbed line by line, to the job's ``container.log``.

What is shared with the container, at the same path inside as outside: the sweep dir (a single run: the job
dir), llem's ``cache_dir``, the Hugging Face cache (``HF_HOME``, else ``~/.cache/huggingface``). Secrets go by
name only (``--env NAME``: the client copies the value), ``LLEM_SECRET_VARS`` too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from llem import results
from llem.config import model_source
from llem.config.runtime import image_for, image_key
from llem.deploy.base import Deployment, JobPlace, StartFailed
from llem.deploy.held import Resident
from llem.deploy.process import Running
from llem.energy.idle import DeviceIdle
from llem.results.environment import SLURM_VARS
from llem.results.preparation import ContainerFacts
from llem.results.row import Stage
from llem.runtime import ContainerRuntime, ContainerSpec, ImageFacts, RuntimeUnavailable, container_name, for_config
from llem.runtime.containers import LABEL_VERSION, build_hint
from llem.support import secrets

log = logging.getLogger(__name__)

JOB_FILE = ".llem-job.pkl"  # in the job dir: what the inside measures
STAGE_FILE = ".llem-stage"  # in the job dir: the inside's stage, so that a death names it
CONTAINER_LOG = "container.log"  # in the job dir: what the inside printed, scrubbed
LOG_TAIL_LINES = 30  # a failed row carries this many of its last lines
START_TIMEOUT_S = 120.0  # `run --detach` returns once the container runs (the image is local)
PULL_TIMEOUT_S = 3600.0
PASSED_BY_NAME = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_DISABLE_TELEMETRY",
                  *SLURM_VARS)  # the SLURM job's ids: the row's env.slurm_* columns are read inside
_reaped: set = set()  # runtimes whose stale containers this driver removed (once per driver)


class Container(Resident):
    """A container held by the driver: removed (its processes killed) when it stops."""

    def __init__(self, runtime: ContainerRuntime, name: str, facts: ContainerFacts,
                 proc: Optional[subprocess.Popen] = None) -> None:
        self.runtime, self.name, self.facts, self.proc = runtime, name, facts, proc
        self.on_stop: List[Any] = []  # what else to release once it is gone (a port claim, a log pipe)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return self.runtime.running(self.name)

    def pids(self) -> List[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None and self.runtime.kills_by_group and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the container's processes
            except ProcessLookupError:
                pass
        self.runtime.rm(self.name)
        if self.proc is not None:
            try:
                self.proc.wait(30.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for release in self.on_stop:
            try:
                release()
            except Exception as exc:  # never raises: the next resident must still start
                log.warning("after the container %s: %s", self.name, exc)
        log.info("container %s: removed", self.name)


def runtime_for(place: JobPlace) -> ContainerRuntime:
    """The job's runtime; the first use in this driver removes containers whose driver is gone."""
    runtime = for_config(place.config.runtime)
    if runtime.name not in _reaped:
        _reaped.add(runtime.name)
        try:
            runtime.reap_stale()
        except RuntimeUnavailable as exc:
            log.warning("stale containers not looked for: %s", exc)
    return runtime


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser().resolve()


def mounts(place: JobPlace, *more: Path) -> List[str]:
    """Host folders the container shares, each at its own path (made if missing; one inside another once)."""
    cfg = place.config
    paths = [place.sweep_dir or place.job_dir, Path(cfg.cache_dir).expanduser(), hf_home(), *more]
    chosen: List[Path] = []
    for path in sorted({Path(p).resolve() for p in paths}, key=lambda p: len(p.parts)):
        path.mkdir(parents=True, exist_ok=True)
        if not any(path == c or c in path.parents for c in chosen):
            chosen.append(path)
    return [str(p) for p in chosen]


def env_names() -> List[str]:
    """Variables the container gets by name: every secret that is set, the names of protected ones, the
    Hugging Face switches and a SLURM job's ids (the values never reach a command line)."""
    names = [n for n in os.environ if secrets.is_secret_name(n)]
    names += [n for n in (secrets.PROTECTED_VAR, *PASSED_BY_NAME) if n in os.environ]
    return sorted(set(names))


def spec_key(runtime: ContainerRuntime, spec: ContainerSpec, image_id: str) -> str:
    """What makes two jobs' containers the same: the runtime, the image's content, the command and what the
    container is given of the host."""
    text = json.dumps([runtime.base, image_id, spec.command, spec.mounts, sorted(spec.gpus), spec.user,
                       spec.env_names, sorted(spec.env.items()), spec.extra])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_image(place: JobPlace, need_llem: bool) -> Optional[ImageFacts]:
    """The check: the runtime, its daemon and the job's image (carrying this llem, when it runs llem) in < 2 s."""
    from llem import __version__

    cfg = place.config
    image, key = image_for(cfg.runtime, cfg.backend, cfg.server.mode), image_key(cfg.runtime, cfg.server.mode)
    facts = for_config(cfg.runtime).check(image, key, cfg.runtime.pull)
    found = facts.labels.get(LABEL_VERSION) if facts is not None else None
    if facts is not None and need_llem and found != __version__:
        what = (f"holds llem {found}, not this llem {__version__}" if found else
                f"has no {LABEL_VERSION} label (it is not one of llem's images)")
        raise RuntimeUnavailable(f"{key}={image!r} {what}: rebuild it ({build_hint(image) or 'docs/containers.md'})")
    return facts


def prepare(runtime: ContainerRuntime, place: JobPlace, image: str) -> ImageFacts:
    """The image, pulled first with runtime.pull (part of the container's start: load)."""
    if place.config.runtime.pull:
        runtime.pull(image, PULL_TIMEOUT_S)
    return runtime.inspect_image(image)


def facts_of(place: JobPlace, image: ImageFacts, start_s: Optional[float], reused: bool) -> ContainerFacts:
    return ContainerFacts(runtime=place.config.runtime.name, runtime_image=image.ref,
                          runtime_image_digest=image.digest, container_start_s=start_s, container_reused=reused)


def last_lines(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class InContainer(Deployment):
    """The measurement process inside llem's image of the engine, in a container the driver holds."""

    container: Optional[Container] = None

    def check_needs(self) -> None:
        check_image(self.place, need_llem=True)
        model_source.check(self.place.config.model)

    def start(self) -> DeviceIdle:
        p, cfg = self.place, self.place.config
        runtime = runtime_for(p)
        image = image_for(cfg.runtime, cfg.backend, cfg.server.mode)
        spec = ContainerSpec(image=image, command=["sleep", "infinity"], key="", mounts=mounts(p), gpus=p.gpus(),
                             env_names=env_names(), env={"HF_HOME": str(hf_home())},
                             user=f"{os.getuid()}:{os.getgid()}", extra=list(cfg.runtime.args))
        try:
            facts = prepare(runtime, p, image)
        except RuntimeUnavailable as exc:
            raise StartFailed(str(exc), type(exc).__name__, Stage.load) from exc
        spec.key = spec_key(runtime, spec, facts.id)
        held = self.held.reuse(spec.key) if cfg.runtime.reuse else self.held.release()
        if held is not None:
            log.info("container %s: reused", held.name)
            self.container, self.started_cold = held, False
            self.facts = facts_of(p, facts, None, True)
            return self.device_idle()  # a sleeping container holds no CUDA context
        idle = self.device_idle()
        name = container_name(spec.key)
        argv = runtime.run_argv(spec, name, detach=True)
        log.info("container: starting %s", " ".join(argv))
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, env=runtime.child_env(spec.env_names))
        except subprocess.TimeoutExpired:
            runtime.rm(name)
            raise StartFailed(f"the container did not start within {START_TIMEOUT_S:g} s", "ContainerError") from None
        if done.returncode != 0:
            said = secrets.scrub("\n".join((done.stderr or done.stdout).strip().splitlines()[-LOG_TAIL_LINES:]))
            runtime.rm(name)
            raise StartFailed(f"the container did not start ({runtime.name} run exited with {done.returncode}): "
                              f"{said}", "ContainerError")
        self.container = Container(runtime, name, facts_of(p, facts, time.monotonic() - t0, False))
        self.started_cold = True
        self.facts = self.container.facts
        self.held.hold(spec.key, self.container)
        log.info("container %s: running after %.2f s", name, self.facts.container_start_s)
        return idle

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        from llem.serving import log_pipe

        p, c = self.place, self.container
        job_file, stage_file = p.job_dir / JOB_FILE, p.job_dir / STAGE_FILE
        stage_file.unlink(missing_ok=True)
        config = dataclasses.replace(p.config, cache_dir=str(Path(p.config.cache_dir).expanduser().resolve()))
        job = {"config": config, "job_dir": str(p.job_dir), "device": p.device, "idle": idle, "facts": self.facts,
               "log_file": _log_file(), "level": logging.getLogger().level}
        with open(job_file, "wb") as fh:
            pickle.dump(job, fh)
        command = ["python", "-m", "llem.deploy.inside", str(job_file)]
        argv = c.runtime.exec_argv(c.name, command, env_names=env_names(), user=f"{os.getuid()}:{os.getgid()}")
        pipe = log_pipe.start(p.job_dir / CONTAINER_LOG)
        try:  # its own session: a terminal's Ctrl-C reaches the driver, which stops it and the container
            proc = subprocess.Popen(argv, stdout=pipe.stdin, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=c.runtime.child_env(env_names()))
        finally:
            pipe.stdin.close()
        running = _Exec(proc, stage_file)
        self.held.running = Running(running, running)  # an interrupt stops it and names the inside's stage
        try:
            code = proc.wait()  # the inside bounds its own waits (measure.max_window_s, the engine's)
        except BaseException:  # an interrupt: the container goes first, so the inside dies writing nothing
            self.held.release()
            raise
        finally:
            self.held.running = None
            if proc.poll() is None:
                proc.kill()
            try:
                pipe.wait(log_pipe.STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            job_file.unlink(missing_ok=True)
        return self._row(code)

    def _row(self, code: int) -> Dict[str, Any]:
        """The row the inside wrote; a failed one, with its stage and last lines, when it died first."""
        p, c = self.place, self.container
        values = results.read_result(p.job_dir)
        if code == 0 and values is not None:
            return values
        if not c.alive():
            self.held.release()  # the container itself died: the next job starts its own
        try:
            stage = Stage((p.job_dir / STAGE_FILE).read_text().strip())
        except (OSError, ValueError):
            stage = Stage.start
        if values is not None and values.get("status") == "ok":
            return values
        why = (f"the measurement in the container exited with code {code} during {stage.value}; its last log lines "
               f"({CONTAINER_LOG}):\n{last_lines(p.job_dir / CONTAINER_LOG)}" if code != 0 else
               "the measurement in the container wrote no result")
        from llem.measure.outcome import record_failure

        return record_failure(p.job_dir, why, "ContainerDied", stage, config=p.config, chash=p.chash)


class _Exec:
    """The foreground ``exec`` as the holder's running measurement (the shape llem.deploy.process.stop takes), so
    that an interrupt names the inside's stage (``value``, an index of Stage, read from the stage file). It
    reports itself not alive, so the interrupt stops nothing here: the container must go before its ``exec``
    client (the inside, its output pipe closed, would write a failed row), and InContainer.measure removes it
    as the interrupt unwinds."""

    def __init__(self, proc: subprocess.Popen, stage_file: Path) -> None:
        self.proc, self.stage_file, self.pid = proc, stage_file, proc.pid

    def is_alive(self) -> bool:
        return False

    def join(self, timeout_s: Optional[float] = None) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass

    @property
    def value(self) -> int:
        try:
            return list(Stage).index(Stage(self.stage_file.read_text().strip()))
        except (OSError, ValueError):
            return list(Stage).index(Stage.start)


def _log_file() -> Optional[str]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
