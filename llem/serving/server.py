"""OpenAI-compatible servers for ``server=launch`` and ``server=external``, run from the job's parent.

Launch: the engine's own server command (``Engine.server_launch``) on the first free port from
``server.port``, its own process group, killed with the driver; healthy when ``/health`` answers.
Its output goes, scrubbed of secrets line by line (:mod:`llem.serving.log_pipe`), to a log file in the sweep
dir (a single run: the job dir), and each job copies the lines written while it ran into its own ``server.log``.

Reuse: the driver keeps one running server. A job whose server *key* — the command (less the port),
its environment and the GPUs — equals the running one's uses it as it is; any other key stops it and
starts its own. So consecutive jobs of a sweep that differ only in what the client does (load.*,
dataset.*, output lengths, repeat, seed of the arrivals) share one engine start. The server is stopped
when the sweep ends (a single run: when the job ends) or when the driver exits.

External: ``server.url`` must answer ``/v1/models`` within ``CHECK_TIMEOUT_S`` at the check.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from llem import locks, reaper
from llem.errors import ServerError
from llem.serving import log_pipe

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.5  # server.url must answer within this at the check
LOG_TAIL_LINES = 30  # a failed row carries this many of the server's last log lines
PORT_TRIES = 200
MODELS_MAX_BYTES = 64 << 20  # a /v1/models answer past this is read no further (50,000 models take ~3 MB)


@dataclass
class Endpoint:
    """What the measurement process needs to reach a server (picklable)."""

    url: str
    mode: str  # launch | external
    prompt: str  # auto | token_ids | text
    id_words: bool = False
    model_name: Optional[str] = None
    pid: Optional[int] = None  # launch: the server's process (the client checks it is alive)
    log_path: Optional[str] = None
    command: Optional[str] = None
    start_s: Optional[float] = None  # how long this job waited for it to answer (None: reused or external)
    reused: bool = False
    starts: int = 0  # servers started by this driver so far
    warnings: List[str] = field(default_factory=list)  # what the server does not take of the job's settings
    max_in_flight: Optional[int] = None  # sequences the server runs at once, where llem knows it
    max_in_flight_null_reason: Optional[str] = None
    container: Any = None  # the container it runs in (llem.results.preparation.ContainerFacts), if any


@dataclass
class _Running:
    key: str
    proc: subprocess.Popen
    endpoint: Endpoint
    log_pipe: Optional[subprocess.Popen] = None  # writes the server's scrubbed output to its log
    port_claim: Optional[int] = None  # the port's lock, held while the server runs
    extra: Dict[str, Any] = field(default_factory=dict)


class Servers:
    """The driver's one running server (module state: the driver runs the jobs of a sweep in turn)."""

    current: Optional[_Running] = None
    starts: int = 0

    @classmethod
    def owned_pids(cls) -> List[int]:
        """The running server's process, which its handle reaps (never a stray to reap)."""
        return [cls.current.proc.pid] if cls.current is not None else []


def auth_headers(server) -> Dict[str, str]:
    """The headers every request to the server carries: ``Authorization: Bearer <value>`` of the variable
    ``server.api_key_env`` names (none without it). The value is read here, never stored in the config."""
    name = getattr(server, "api_key_env", None)
    value = os.environ.get(name) if name else None
    return {"Authorization": f"Bearer {value}"} if value else {}


def _get(url: str, timeout_s: float, headers: Optional[Dict[str, str]] = None) -> Any:
    """The JSON a GET answers, within ``timeout_s`` as a whole: urllib's timeout bounds each read, so a server
    that trickles its answer a byte at a time would hold the check without end; the read runs in a daemon
    thread that is left behind when the time is up. At most ``MODELS_MAX_BYTES`` of the body are read."""
    box: Dict[str, Any] = {}

    def fetch() -> None:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - the user's own server
                box["body"] = resp.read(MODELS_MAX_BYTES)
        except Exception as exc:  # raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=fetch, name="llem-get", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"its answer was not complete after {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return json.loads(box["body"] or b"null")


def model_names(models: Any, url: str) -> List[str]:
    """The model ids of a ``/v1/models`` answer (``{"data": [{"id": ...}, ...]}``); ServerError naming
    server.url when the answer is not of that shape."""
    data = models.get("data") if isinstance(models, dict) else None
    names = [m.get("id") if isinstance(m, dict) else None for m in data] if isinstance(data, list) else [None]
    if not all(isinstance(n, str) and n for n in names):
        shown = " ".join(json.dumps(models)[:200].split())
        raise ServerError(f"server.url={url!r} answered GET /v1/models with {shown}, not an OpenAI model list "
                          "({\"data\": [{\"id\": \"<name>\"}, …]}, ids strings): is it an OpenAI-compatible server?")
    return names


def check_external(url: str, headers: Optional[Dict[str, str]] = None) -> List[str]:
    """The model names an external server lists; ServerError within CHECK_TIMEOUT_S if it does not answer."""
    base = url.rstrip("/")
    t0 = time.monotonic()
    try:
        models = _get(f"{base}/v1/models", CHECK_TIMEOUT_S, headers)
    except urllib.error.HTTPError as exc:
        raise ServerError(f"server.url={url!r} answered GET /v1/models with HTTP {exc.code}: is it an "
                          "OpenAI-compatible server?") from None
    except ValueError as exc:
        raise ServerError(f"server.url={url!r} answered GET /v1/models with something that is not JSON ({exc}): "
                          "is it an OpenAI-compatible server?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"server.url={url!r} did not answer GET /v1/models within {CHECK_TIMEOUT_S:g} s "
                          f"({reason}; {time.monotonic() - t0:.1f} s): start the server first, or check the "
                          "URL") from None
    return model_names(models, url)


def free_port(host: str, first: int) -> Tuple[int, int]:
    """The first port from ``first`` that no other llem process has claimed, nothing listens on and that can be
    bound (never one in use), with its claim (:func:`llem.locks.port_lock`; close it when the server stops)."""
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


def last_lines(path: Optional[str], n: int = LOG_TAIL_LINES, start: int = 0) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n:])


def _die_with_parent() -> None:
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def alive(pid: Optional[int]) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_healthy(run: _Running, launch, timeout_s: float) -> float:
    t0 = time.monotonic()
    url = run.endpoint.url + launch.health_path
    while True:
        code = run.proc.poll()
        if code is not None:
            raise ServerError(f"the server exited with code {code} before it answered {launch.health_path}; its last "
                              f"log lines:\n{last_lines(run.endpoint.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - our own server on loopback
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise ServerError(f"the server did not answer {launch.health_path} within server.startup_timeout_s="
                              f"{timeout_s:g} s; its last log lines:\n{last_lines(run.endpoint.log_path)}")
        time.sleep(0.5)


def launch(engine, config, log_dir: Path, gpus: List[str], before_start=lambda: None,
           log_name: Optional[str] = None) -> Endpoint:
    """The endpoint of this job's server: the running one when its key matches (and server.reuse), else a
    new one: the old one stopped first, then ``before_start`` (the device-idle baseline, with no context on
    the GPUs), then the start. Raises ServerError with the server's last log lines."""
    s = config.server
    model_dir = engine.served_model(Path(config.cache_dir))
    probe = engine.server_launch(model_dir, s.host, s.port)
    key = server_key(probe.argv + list(s.args), probe.env, gpus)
    cur = Servers.current
    if s.reuse and cur is not None and cur.key == key and cur.proc.poll() is None:
        log.info("server: reusing the running one (%s, pid %d)", cur.endpoint.url, cur.proc.pid)
        return Endpoint(**{**cur.endpoint.__dict__, "start_s": None, "reused": True, "starts": Servers.starts})
    stop()
    before_start()
    port, claim = free_port(s.host, s.port)
    spec = engine.server_launch(model_dir, s.host, port)
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
    Servers.starts += 1
    endpoint = Endpoint(url=f"http://{s.host}:{port}", mode="launch", prompt=spec.prompt if s.prompt == "auto"
                        else s.prompt, id_words=spec.id_words, pid=proc.pid, log_path=str(log_path),
                        command=" ".join(argv), starts=Servers.starts, warnings=list(spec.warnings),
                        **_in_flight(spec, list(s.args)))
    Servers.current = _Running(key, proc, endpoint, pipe, claim)
    try:
        endpoint.start_s = _wait_healthy(Servers.current, spec, s.startup_timeout_s)
    except ServerError:
        stop()
        raise
    log.info("server: healthy at %s after %.1f s (pid %d)", endpoint.url, endpoint.start_s, proc.pid)
    return endpoint


def _in_flight(spec: Any, args: List[str]) -> Dict[str, Any]:
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


def external(config) -> Endpoint:
    s = config.server
    models = check_external(s.url, auth_headers(s))
    name = s.model_name or (models[0] if models else None)
    return Endpoint(url=s.url.rstrip("/"), mode="external", prompt=s.prompt, model_name=name,
                    max_in_flight_null_reason="an external server runs at its own setting, unknown to llem")


def stop() -> None:
    """Stop the running server (its process group): SIGTERM, SIGKILL after 30 s."""
    cur, Servers.current = Servers.current, None
    if cur is None:
        return
    tree = reaper.descendants(cur.proc.pid)  # its workers: orphans once it ends, reaped below
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if cur.proc.poll() is not None:
            break
        try:
            os.killpg(cur.proc.pid, sig)
        except OSError:
            pass
        try:
            cur.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    reaper.reap(tree)
    if cur.port_claim is not None:
        os.close(cur.port_claim)  # the port is free for another llem process's server
    if cur.log_pipe is not None:
        try:  # the server's output has ended: the pipe writes what is left and exits
            cur.log_pipe.wait(log_pipe.STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the server log's pipe (pid %d) is still writing", cur.log_pipe.pid)
    log.info("server: stopped (pid %d)", cur.proc.pid)


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
    from llem import secrets

    secrets.scrub_file(job_dir / "server.log")


def log_size(endpoint: Endpoint) -> int:
    try:
        return os.path.getsize(endpoint.log_path) if endpoint.log_path else 0
    except OSError:
        return 0


atexit.register(stop)
