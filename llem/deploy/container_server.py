"""The engine's own server inside its image (``server=launch`` with ``runtime=docker|podman``).

The engine's server command (the serving part of the engine contract) is the container's command: ``<runtime>
run --rm --name … --network=host --init <server image> <argv>``, in the foreground, its output piped, scrubbed
line by line, to the server log (as for a server on the host). The port is chosen on the host and the
server's health is asked from the host; the client, the energy meter and the idle floors stay on the host.
The container is the driver's resident: consecutive jobs whose server and container are the same (the server
key, the image's content, the mounts, the GPUs; ``server.reuse`` and ``runtime.reuse``) use it as it runs.
Stopping it is ``rm --force``. Its processes are seen from the host through the container's init (its pid
on this host), so the server's memory is counted as for a server on the host.

The server's command names the driver's own interpreter or a host path; inside, the image's own ``python3``
(or the program's name, found on the image's PATH) runs instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from llem.backends import engine_class
from llem.config import model_source
from llem.config.runtime import image_for
from llem.deploy.base import StartFailed
from llem.deploy.container import (
    Container,
    check_image,
    env_names,
    facts_of,
    hf_home,
    mounts,
    prepare,
    runtime_for,
    spec_key,
)
from llem.deploy.server_process import free_port, in_flight, server_key, wait_healthy
from llem.deploy.servers import Served
from llem.energy.idle import DeviceIdle
from llem.results.row import Stage
from llem.runtime import ContainerRuntime, ContainerSpec, RuntimeUnavailable, container_name
from llem.serving import log_pipe
from llem.serving.server import Endpoint, last_lines
from llem.support.errors import EngineUnavailable, ServerError

log = logging.getLogger(__name__)

SERVER_LOGS = ".llem-servers"  # in a sweep dir: the log of each server its jobs started
RUNNING_TIMEOUT_S = 120.0  # the container exists and runs (its server may still be starting)


def inside_argv(argv: List[str]) -> List[str]:
    """The server's command as the image runs it: the driver's interpreter → ``python3``; a host path → its
    program name on the image's PATH."""
    head = argv[0]
    if head == sys.executable:
        head = "python3"
    elif os.path.isabs(head):
        head = os.path.basename(head)
    return [head, *argv[1:]]


def engine_version(runtime: ContainerRuntime, name: str, package: Optional[str]) -> Dict[str, Optional[str]]:
    """The engine's package version as the running container reports it, or why it is null."""
    if not package:
        return {"container_null_reason": "the engine names no package to ask the image for"}
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    for python in ("python3", "python"):
        version = runtime.exec_output(name, [python, "-c", code])
        if version:
            return {"engine_version_inside": f"{package}=={version.splitlines()[-1]}"}
    return {"container_null_reason": f"the image did not report {package}'s version (python3 -c importlib.metadata)"}


class ContainerServer(Served):
    """The engine's own server in a container, measured over HTTP from the host."""

    def check_needs(self) -> None:
        check_image(self.place, need_llem=False)  # the engine's own image: llem need not be in it
        model_source.check(self.place.config.model)

    def start(self) -> DeviceIdle:
        p, cfg, s = self.place, self.place.config, self.place.config.server
        runtime = runtime_for(p)
        image = image_for(cfg.runtime, cfg.backend, "launch")
        serving = engine_class(cfg.backend.name).serving(cfg, p.device)
        try:
            model_dir = serving.served_model(Path(cfg.cache_dir).expanduser())
            probe = serving.command(model_dir, s.host, s.port)
            facts = prepare(runtime, p, image)
        except (RuntimeUnavailable, EngineUnavailable, OSError) as exc:
            raise StartFailed(f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.load) from exc
        spec = ContainerSpec(image=image, command=[], key="", mounts=mounts(p, *([model_dir] if model_dir else [])),
                             gpus=p.gpus(), env_names=env_names(), env={"HF_HOME": str(hf_home()), **probe.env},
                             extra=list(cfg.runtime.args))
        served = server_key(inside_argv(probe.argv) + list(s.args), probe.env, spec.gpus)
        spec.key = hashlib.sha256(f"{served}-{spec_key(runtime, spec, facts.id)}".encode()).hexdigest()[:16]
        cur = self.held.reuse(spec.key) if s.reuse and cfg.runtime.reuse else self.held.release()
        if cur is not None:
            log.info("server: reusing the running container %s (%s)", cur.name, cur.endpoint.url)
            self.started_cold = False
            self.endpoint = Endpoint(**{**cur.endpoint.__dict__, "start_s": None, "reused": True,
                                        "starts": self.held.server_starts,
                                        "container": facts_of(p, facts, None, True)})
            self.endpoint.container.engine_version_inside = cur.facts.engine_version_inside
            self.log_from = os.path.getsize(self.endpoint.log_path) if os.path.exists(self.endpoint.log_path) else 0
            return self._reused_floor()
        idle = self.device_idle()  # no resident, and no server yet: no CUDA context on the job's GPUs
        self.started_cold = True
        port, claim = free_port(s.host, s.port)
        launch = serving.command(model_dir, s.host, port)
        spec.command = inside_argv(launch.argv) + list(s.args)
        name = container_name(spec.key)
        argv = runtime.run_argv(spec, name, detach=False)
        sweep = p.sweep_dir
        log_dir = sweep / SERVER_LOGS if sweep else p.job_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / (f"server-{spec.key[:8]}.log" if sweep else "server.log")
        pipe = log_pipe.start(log_path)
        log.info("server: starting %s", " ".join(argv))
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdout=pipe.stdin, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=runtime.child_env(spec.env_names))
        except OSError as exc:
            os.close(claim)
            raise StartFailed(f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.load) from exc
        finally:
            pipe.stdin.close()
        self.held.server_starts += 1
        container = Container(runtime, name, facts_of(p, facts, None, False), proc)
        container.on_stop += [lambda: os.close(claim), lambda: pipe.wait(log_pipe.STOP_WAIT_S)]
        self.held.hold(spec.key, container)
        try:
            pid = self._wait_running(container, log_path)
            container.facts.container_start_s = time.monotonic() - t0
            container.facts.__dict__.update(engine_version(runtime, name, engine_class(cfg.backend.name).package))
            container.endpoint = Endpoint(
                url=f"http://{s.host}:{port}", mode="launch",
                prompt=launch.prompt if s.prompt == "auto" else s.prompt, id_words=launch.id_words, pid=pid,
                log_path=str(log_path), command=" ".join(argv), starts=self.held.server_starts,
                warnings=list(launch.warnings), container=container.facts, **in_flight(launch, list(s.args)))
            wait_healthy(container.proc, container.endpoint.url, launch.health_path, container.endpoint.log_path,
                         s.startup_timeout_s - (time.monotonic() - t0), what="the server's container")
            container.endpoint.start_s = time.monotonic() - t0  # from the run to /health, as on the host
        except ServerError as exc:
            self.held.release()
            raise StartFailed(f"ServerError: {exc}", "ServerError", Stage.load) from exc
        log.info("server: healthy in container %s at %s after %.1f s", name, container.endpoint.url,
                 container.endpoint.start_s)
        self.endpoint = container.endpoint
        return idle

    def _reused_floor(self) -> DeviceIdle:
        if self.place.device != "cuda":
            return DeviceIdle()
        from llem.deploy import floors

        return floors.for_server(self.place.gpus_needed, self.place.sweep_dir)

    def _wait_running(self, c: Container, log_path: Path) -> int:
        """The host pid of the container's init once it runs; ServerError with its last lines if it does not."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < RUNNING_TIMEOUT_S:
            if c.proc.poll() is not None:
                raise ServerError(f"the container exited with code {c.proc.returncode} as it started; its last log "
                                  f"lines:\n{last_lines(str(log_path))}")
            if c.runtime.kills_by_group:
                return c.proc.pid  # no daemon: the foreground process is the container's root on this host
            done = c.runtime._call(["container", "inspect", "--format", "{{.State.Pid}}", c.name], check=False)
            if done.returncode == 0 and done.stdout.strip() not in ("", "0"):
                return int(done.stdout.strip())
            time.sleep(0.1)
        raise ServerError(f"the container was not running after {RUNNING_TIMEOUT_S:g} s; its last log lines:\n"
                          f"{last_lines(str(log_path))}")

