"""``runtime=auto``: the host where the job's engine imports here, else the engine's image under the first
container runtime that answers (docker, then podman) — decided once per job, when its place is found.

"Imports here" is the engine's own check run in this process (the server's check with ``server=launch``):
it looks for the engine's packages without importing them (``importlib.util.find_spec``), so the decision
costs milliseconds and loads no engine. Only :class:`~llem.support.errors.EngineUnavailable` (a package missing)
sends the job to a container; any other problem the check finds is the host's to report, at its check stage.
A runtime "answers" when its client is on PATH and ``<runtime> version`` (docker: the daemon's half of it;
podman: ``info``) returns within :data:`PROBE_TIMEOUT_S`. Jobs that cannot go into a container — an external
server, ``isolate=false``, an engine with no image for the server mode — stay on the host.

The choice is the job's resolved config (``runtime.name`` host, docker or podman: its ``config_hash`` is the
one that runtime gives, so a rerun on the same machine resumes) and a row warning saying why. Nothing found:
the job fails at its check, naming ``runtime=auto``, the engine's install hint and the runtimes tried.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from llem.config import Config
from llem.config.runtime import image_for, image_key
from llem.deploy.base import Deployment, StartFailed
from llem.energy.idle import DeviceIdle
from llem.support.errors import EngineUnavailable

PROBE_TIMEOUT_S = 0.8  # per runtime: the probes and the image check together stay within the check's 2 s
PROBES = {"docker": ["version", "--format", "{{.Server.Version}}"], "podman": ["info", "--format", "{{.Host.Arch}}"]}


@dataclass(frozen=True)
class Choice:
    """What ``runtime=auto`` resolved to: the config to run (None: nothing fits), and why."""

    config: Optional[Config]
    reason: str


def host_imports(config: Config, device: str) -> Optional[str]:
    """None when the job's engine (its server's, with server=launch) can run in this process's environment;
    else what is missing, in the engine's own words (its install hint)."""
    from llem.backends import engine_class

    engine = engine_class(config.backend.name)
    try:
        if config.server.mode == "launch":
            engine.serving(config, device).check()
        else:
            engine(config, device).check()
    except EngineUnavailable as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - another problem (a config one): the host's check reports it
        return None
    return None


def answers(name: str, global_args: Sequence[str] = (), timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the runtime ``name`` is on PATH and answers; else why not (for the error naming it)."""
    if shutil.which(name) is None:
        return f"{name}: not on PATH"
    argv = [name, *global_args, *PROBES[name]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{name}: `{' '.join(argv)}` did not answer within {timeout_s:g} s"
    except OSError as exc:
        return f"{name}: {exc}"
    if done.returncode != 0:
        return f"{name}: {' '.join((done.stderr or done.stdout).split())[:200]}"
    return None


def choose(config: Config, device: str, imports: Optional[Callable[[Config, str], Optional[str]]] = None,
           probe: Optional[Callable[..., Optional[str]]] = None) -> Choice:
    """Resolve ``runtime=auto`` for one job; ``imports`` and ``probe`` are the two questions it asks
    (default: :func:`host_imports`, :func:`answers`)."""
    imports, probe = imports or host_imports, probe or answers
    rt = config.runtime
    host = dataclasses.replace(config, runtime=dataclasses.replace(rt, name="host"))
    if config.server.mode == "external":
        return Choice(host, "runtime=auto chose host: an external server runs where it was started")
    missing = imports(config, device)
    if missing is None:
        return Choice(host, f"runtime=auto chose host: backend={config.backend.name} imports on this host")
    if not config.isolate:
        return Choice(None, f"runtime=auto: {missing}; and isolate=false keeps the engine in llem's own process "
                            "(a container needs isolate=true)")
    tried: List[str] = []
    for name in PROBES:
        why_not = probe(name, list(rt.global_args))
        if why_not is not None:
            tried.append(why_not)
            continue
        runtime = dataclasses.replace(rt, name=name)
        image = image_for(runtime, config.backend, config.server.mode)
        if image is None:
            return Choice(None, f"runtime=auto: {missing}; and {image_key(runtime, config.server.mode)} names no "
                                "image for a container: set runtime.image=<name:tag>")
        return Choice(dataclasses.replace(config, runtime=runtime),
                      f"runtime=auto chose {name}: backend={config.backend.name} does not import on this host "
                      f"({missing}); {name} answers, the job runs in {image}")
    return Choice(None, f"runtime=auto found no place for backend={config.backend.name}: it does not import on "
                        f"this host ({missing}), and no container runtime answers ({'; '.join(tried)}): install "
                        "the engine here, or docker or podman (with the engine's image), or name runtime=<name>")


class Refused(Deployment):
    """A job ``runtime=auto`` found no place for: its check fails with the reason (nothing starts)."""

    def check_needs(self) -> None:
        raise EngineUnavailable(self.place.refused)

    def start(self) -> DeviceIdle:  # never reached: the check failed
        raise StartFailed(self.place.refused or "runtime=auto found no place", "EngineUnavailable")

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:  # never reached: the check failed
        raise EngineUnavailable(self.place.refused)
