"""A server llem launches (``server=launch``): the engine's own server command on the first free port from
``server.port``, in its own process group, killed with the driver; healthy when ``/health`` answers.

Its output goes, scrubbed of secrets line by line (:mod:`llem.serving.log_pipe`), to a log file in the sweep
dir (a single run: the job dir), and each job copies the lines written while it ran into its own
``server.log``.

Reuse: the driver holds one running server (llem.deploy.held). A job whose server *key* — the command (less
the port), its environment and the GPUs — equals the running one's uses it as it is; any other key stops it
and starts its own. So consecutive jobs of a sweep that differ only in what the client does (load.*,
dataset.*, output lengths, repeat, seed of the arrivals) share one engine start. The server is stopped when
the driver exits, or, in a single run, when the job ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from llem.deploy.held import Held, Resident
from llem.serving import log_pipe
from llem.serving.server import Endpoint, last_lines
from llem.support import locks, reaper
from llem.support.errors import ServerError

log = logging.getLogger(__name__)

PORT_TRIES = 200
HEALTH_TIMEOUT_S = 5.0  # a running server's health path must answer within this before a job reuses it


class RunningServer(Resident):
    """A launched server held by the driver: its process, what jobs need to reach it, its log pipe and port."""

    def __init__(self, proc: subprocess.Popen, endpoint: Endpoint, pipe: Optional[subprocess.Popen] = None,
                 port_claim: Optional[int] = None, health_path: Optional[str] = None) -> None:
        self.proc, self.endpoint, self.log_pipe, self.port_claim = proc, endpoint, pipe, port_claim
        self.health_path = health_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        """Running, and its health path answers 200 within HEALTH_TIMEOUT_S."""
        if not self.alive():
            return False
        if self.health_path is None:
            return True
        try:
            with urllib.request.urlopen(self.endpoint.url + self.health_path,  # noqa: S310 - our own server
                                        timeout=HEALTH_TIMEOUT_S) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def pids(self) -> List[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        """Stop the server (its process group): SIGTERM, SIGKILL after 30 s; its workers reaped, its port freed."""
        tree = reaper.descendants(self.proc.pid)  # its workers: orphans once it ends, reaped below
        for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        reaper.reap(tree)
        if self.port_claim is not None:
            os.close(self.port_claim)  # the port is free for another llem process's server
        if self.log_pipe is not None:
            try:  # the server's output has ended: the pipe writes what is left and exits
                self.log_pipe.wait(log_pipe.STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("the server log's pipe (pid %d) is still writing", self.log_pipe.pid)
        log.info("server: stopped (pid %d)", self.proc.pid)


def launch(serving: Any, config: Any, log_dir: Path, gpus: List[str], held: Held, before_start=lambda: None,
           log_name: Optional[str] = None) -> Endpoint:
    """The endpoint of this job's server: the driver's running one when its key matches (and server.reuse),
    else a new one: the resident stopped first, then ``before_start`` (the device-idle baseline, with no context
    on the GPUs), then the start; held for later jobs. ``serving`` is the engine's
    :class:`~llem.backends.base.Serving`. Raises ServerError with the server's last log lines."""
    s = config.server
    model_dir = serving.served_model(Path(config.cache_dir))
    probe = serving.command(model_dir, s.host, s.port)
    key = server_key(probe.argv + list(s.args), probe.env, gpus)
    cur = held.reuse(key) if s.reuse else held.release()
    if cur is not None:
        log.info("server: reusing the running one (%s, pid %d)", cur.endpoint.url, cur.proc.pid)
        return Endpoint(**{**cur.endpoint.__dict__, "start_s": None, "reused": True, "starts": held.server_starts})
    before_start()
    port, claim = free_port(s.host, s.port)
    spec = serving.command(model_dir, s.host, port)
    argv = spec.argv + list(s.args)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / (log_name or f"server-{key[:8]}.log")
    pipe = log_pipe.start(log_path)  # scrubs each line on its way to the file
    env = {**os.environ, **spec.env}
    log.info("server: starting %s", " ".join(argv))
    try:
        proc = subprocess.Popen(argv, stdout=pipe.stdin, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - setsid + death signal, no threads
    except OSError:
        os.close(claim)
        raise
    finally:
        pipe.stdin.close()  # the server holds the pipe's only writing end now
    held.server_starts += 1
    endpoint = Endpoint(url=f"http://{s.host}:{port}", mode="launch", prompt=spec.prompt if s.prompt == "auto"
                        else s.prompt, id_words=spec.id_words, pid=proc.pid, log_path=str(log_path),
                        command=" ".join(argv), starts=held.server_starts, warnings=list(spec.warnings),
                        **in_flight(spec, list(s.args)))
    running = RunningServer(proc, endpoint, pipe, claim, spec.health_path)
    held.hold(key, running)
    try:
        endpoint.start_s = wait_healthy(running.proc, endpoint.url, spec.health_path, endpoint.log_path,
                                        s.startup_timeout_s)
    except ServerError:
        held.release()
        raise
    log.info("server: healthy at %s after %.1f s (pid %d)", endpoint.url, endpoint.start_s, proc.pid)
    return endpoint


def in_flight(spec: Any, args: List[str]) -> Dict[str, Any]:
    """What the server runs at once: the engine's flag as ``server.args`` last set it, else what the engine said."""
    flag, value = spec.in_flight_flag, None
    for i, arg in enumerate(args if flag else []):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    if value is not None and value.isdigit():
        return {"max_in_flight": int(value), "max_in_flight_null_reason": None}
    return {"max_in_flight": spec.max_in_flight, "max_in_flight_null_reason": spec.max_in_flight_null_reason}


def free_port(host: str, first: int) -> Tuple[int, int]:
    """The first port from ``first`` that no other llem process has claimed, nothing listens on and that can be
    bound (never one in use), with its claim (:func:`llem.support.locks.port_lock`; close it when the server stops)."""
    for port in range(first, min(first + PORT_TRIES, 65536)):
        claim = locks.port_lock(port)
        if claim is None:
            continue  # another llem process is starting or running a server there
        if _in_use(host, port):
            os.close(claim)
            continue
        return port, claim
    raise ServerError(f"no free port in [{first}, {first + PORT_TRIES}) on {host}: set server.port")


def _in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex((host, port)) == 0:
            return True  # someone answers there
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def server_key(argv: List[str], env: Dict[str, str], gpus: List[str]) -> str:
    """What makes two jobs' servers the same: the command without its ``--port N``, its environment, the GPUs."""
    cmd = [a for i, a in enumerate(argv) if a != "--port" and not (i and argv[i - 1] == "--port")]
    text = json.dumps([cmd, sorted(env.items()), sorted(gpus)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _die_with_parent() -> None:
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


HEALTH_POLL_S = 0.1  # server_start_s is good to this; a refused connection on loopback costs nothing

def wait_healthy(proc: subprocess.Popen, base_url: str, health_path: str, log_path: Optional[str],
                 timeout_s: float, what: str = "the server") -> float:
    """Seconds until the server's ``health_path`` answers 200; ServerError with the log's last lines when
    ``proc`` (the server, or the runtime client running its container) exits first or ``timeout_s`` passes."""
    t0 = time.monotonic()
    url = base_url + health_path
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} before it answered {health_path}; its last "
                              f"log lines:\n{last_lines(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - our own server on loopback
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise ServerError(f"the server did not answer {health_path} within server.startup_timeout_s="
                              f"{timeout_s:g} s; its last log lines:\n{last_lines(log_path)}")
        time.sleep(HEALTH_POLL_S)


def copy_log(endpoint: Endpoint, offset: int, job_dir: Path) -> None:
    """The server's log lines written since ``offset`` into the job dir's server.log."""
    if not endpoint.log_path or Path(endpoint.log_path) == job_dir / "server.log":
        return
    try:
        with open(endpoint.log_path, "rb") as src:
            src.seek(offset)
            (job_dir / "server.log").write_bytes(src.read())
    except OSError as exc:
        log.warning("server log not copied: %s", exc)
        return
    from llem.support import secrets

    secrets.scrub_file(job_dir / "server.log")


def log_size(endpoint: Endpoint) -> int:
    try:
        return os.path.getsize(endpoint.log_path) if endpoint.log_path else 0
    except OSError:
        return 0

