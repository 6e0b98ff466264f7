"""docker and podman behind one small class, driven through their own command-line clients.

Why the CLI and not python-on-whales: python-on-whales passes a container's environment as values
(``--env NAME=value`` built from a dict), which would put a secret on a command line that ``ps`` shows; the
clients themselves take ``-e NAME`` and copy the value from their own environment, which is how llem passes
every secret. Every other call here is one argv list (never a shell string), run with a bounded wait.

A container carries labels that say whose it is: ``llem.driver`` (the driver's pid), ``llem.host`` (its host
name) and ``llem.key`` (what it holds, for reuse). A driver killed with SIGKILL cannot stop its containers;
the next llem start on the same host removes those whose driver is gone (:meth:`ContainerRuntime.reap_stale`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from llem.support.errors import EngineUnavailable

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.8  # the check's whole budget: a failure is reported within 2 s
CALL_TIMEOUT_S = 60.0  # inspect, exec of a one-liner, logs
STOP_TIMEOUT_S = 30.0  # rm -f: the runtime kills the container's processes and removes it
LABEL_DRIVER, LABEL_HOST, LABEL_KEY, LABEL_VERSION = "llem.driver", "llem.host", "llem.key", "llem.version"
INSTALL = {"docker": "apt-get install docker.io (or Docker's own packages)", "podman": "apt-get install podman"}
START_DAEMON = {"docker": "sudo systemctl start docker (or set DOCKER_HOST to a daemon that runs)",
                "podman": "check `podman info` (podman needs no daemon)"}
NOT_ANSWERING = ("cannot connect", "is the docker daemon running", "connection refused", "no such file or directory",
                 "permission denied while trying to connect", "error during connect")


class RuntimeUnavailable(EngineUnavailable):
    """The container runtime, its daemon or the job's image is not there; the message names the key and the fix."""


@dataclass
class ImageFacts:
    """What the runtime says of an image present locally."""

    ref: str
    id: str  # the content-addressed image id (sha256:…)
    repo_digests: List[str] = field(default_factory=list)  # registry digests (name@sha256:…), when it was pulled
    labels: Dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The content digest the row records: the registry's when the image came from one, else its id."""
        return self.repo_digests[0] if self.repo_digests else self.id


@dataclass
class ContainerSpec:
    """One container: its image and command, and what it is given of the host."""

    image: str
    command: List[str]
    key: str  # what it holds: equal keys can share one container
    mounts: List[str] = field(default_factory=list)  # host paths, mounted at the same path inside
    gpus: List[str] = field(default_factory=list)  # GPU UUIDs; none on the CPU
    env_names: List[str] = field(default_factory=list)  # passed by name: the client copies the value
    env: Dict[str, str] = field(default_factory=dict)  # plain settings (never secrets), passed as NAME=value
    user: Optional[str] = None  # uid:gid; None: the image's own user
    extra: List[str] = field(default_factory=list)  # runtime.args


class ContainerRuntime:
    """docker or podman: check, inspect, run, exec, logs, remove, reap."""

    kills_by_group = False  # True: a foreground container is stopped by signalling its process group

    def __init__(self, name: str, global_args: Sequence[str] = ()) -> None:
        self.name = name
        self.base = [name, *global_args]

    # -- check -------------------------------------------------------------------------------------------
    def check(self, image: str, image_key: str, pull: bool) -> Optional[ImageFacts]:
        """The runtime on PATH, its daemon answering and (without ``pull``) the image present, within
        CHECK_TIMEOUT_S; RuntimeUnavailable naming the key and the command that fixes it. Returns the image's
        facts, or None when it will be pulled at load."""
        t0 = time.monotonic()
        if shutil.which(self.name) is None:
            raise RuntimeUnavailable(f"runtime.name={self.name}: `{self.name}` is not on PATH: install it "
                                     f"({INSTALL.get(self.name, self.name)}), or use runtime=host")
        argv = [*self.base, "image", "inspect", image] if not pull else [*self.base, "version"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeUnavailable(f"runtime.name={self.name}: `{' '.join(argv)}` did not answer within "
                                     f"{CHECK_TIMEOUT_S:g} s: is its daemon running? "
                                     f"{START_DAEMON[self.name]}") from None
        said = " ".join((done.stderr or done.stdout).split())[:300]
        if done.returncode != 0 and any(s in said.lower() for s in NOT_ANSWERING) and "image" not in said.lower():
            raise RuntimeUnavailable(f"runtime.name={self.name}: its daemon does not answer ({said}): "
                                     f"{START_DAEMON[self.name]}")
        if done.returncode != 0:
            if pull:
                raise RuntimeUnavailable(f"runtime.name={self.name}: `{' '.join(argv)}` failed ({said})")
            build = f"build it ({build_hint(image)}), or " if build_hint(image) else ""
            raise RuntimeUnavailable(f"{image_key}={image!r} is not present locally ({self.name}: {said}) and "
                                     f"runtime.pull=false: {build}`{self.name} pull {image}`, or set "
                                     "runtime.pull=true")
        log.debug("%s check: %.2f s", self.name, time.monotonic() - t0)
        return None if pull else _facts(image, done.stdout)

    def inspect_image(self, image: str) -> ImageFacts:
        done = self._call(["image", "inspect", image])
        return _facts(image, done.stdout)

    def pull(self, image: str, timeout_s: float) -> None:
        """Pull ``image`` (part of load, never of a window); RuntimeUnavailable with the client's words."""
        try:
            done = subprocess.run([*self.base, "pull", image], capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeUnavailable(f"runtime.pull: `{self.name} pull {image}` took more than {timeout_s:g} s") \
                from None
        if done.returncode != 0:
            raise RuntimeUnavailable(f"runtime.pull: `{self.name} pull {image}` failed: "
                                     f"{' '.join(done.stderr.split())[:300]}")

    # -- command lines -----------------------------------------------------------------------------------
    def run_argv(self, spec: ContainerSpec, name: str, *, detach: bool) -> List[str]:
        """``run`` for ``spec``: removed when it stops, on the host's network, an init process reaping its
        children, mounts at the same path, secrets by name, labelled with this driver, its host and its key."""
        argv = [*self.base, "run", "--rm", "--name", name, "--network=host", "--init"]
        if detach:
            argv.append("--detach")
        for label, value in ((LABEL_DRIVER, str(os.getpid())), (LABEL_HOST, socket.gethostname()),
                             (LABEL_KEY, spec.key)):
            argv += ["--label", f"{label}={value}"]
        if spec.user:
            argv += ["--user", spec.user]
        for path in spec.mounts:
            argv += ["--volume", f"{path}:{path}"]
        argv += self.gpu_args(spec.gpus)
        for name_ in spec.env_names:
            argv += ["--env", name_]
        for key, value in spec.env.items():
            argv += ["--env", f"{key}={value}"]
        return [*argv, *spec.extra, spec.image, *spec.command]

    def gpu_args(self, uuids: Sequence[str]) -> List[str]:
        """Exactly these GPUs: docker's ``--gpus device=…`` (the NVIDIA runtime), podman's CDI devices."""
        if not uuids:
            return []
        if self.name == "podman":
            return [a for u in uuids for a in ("--device", f"nvidia.com/gpu={u}")]
        return ["--gpus", f"\"device={','.join(uuids)}\""]  # quoted: docker reads the value as CSV

    def exec_argv(self, container: str, command: Sequence[str], env_names: Sequence[str] = (),
                  user: Optional[str] = None) -> List[str]:
        argv = [*self.base, "exec"]
        if user:
            argv += ["--user", user]
        for name in env_names:
            argv += ["--env", name]
        return [*argv, container, *command]

    def child_env(self, env_names: Sequence[str]) -> Optional[Dict[str, str]]:
        """The client's environment (None: this process's): docker and podman copy ``--env NAME`` from it."""
        return None

    def rm_argv(self, container: str) -> List[str]:
        return [*self.base, "rm", "--force", container]

    # -- running containers ------------------------------------------------------------------------------
    def rm(self, container: str) -> None:
        """Stop and remove ``container`` (its processes killed); nothing if it is gone."""
        try:
            subprocess.run(self.rm_argv(container), capture_output=True, timeout=STOP_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError) as exc:
            log.warning("%s rm --force %s: %s", self.name, container, exc)

    def running(self, container: str) -> bool:
        try:
            done = self._call(["container", "inspect", "--format", "{{.State.Running}}", container], check=False)
        except RuntimeUnavailable:
            return False
        return done.returncode == 0 and done.stdout.strip() == "true"

    def logs(self, container: str, tail: int) -> str:
        """The container's last ``tail`` lines of output (empty when it is gone)."""
        try:
            done = self._call(["logs", "--tail", str(tail), container], check=False)
        except RuntimeUnavailable:
            return ""
        return (done.stdout + done.stderr).strip()

    def exec_output(self, container: str, command: Sequence[str]) -> Optional[str]:
        """What a short command prints inside ``container``; None when it fails."""
        try:
            done = subprocess.run(self.exec_argv(container, command), capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def ours(self) -> List[Dict[str, str]]:
        """llem's containers on this runtime: name, driver pid and host of each."""
        fmt = "\t".join(["{{.Names}}", *(self._label_template(label) for label in (LABEL_DRIVER, LABEL_HOST))])
        done = self._call(["ps", "--all", "--filter", f"label={LABEL_DRIVER}", "--format", fmt], check=False)
        rows = [line.split("\t") for line in done.stdout.splitlines() if line.strip()]
        return [{"name": r[0], "driver": r[1], "host": r[2] if len(r) > 2 else ""} for r in rows]

    def _label_template(self, label: str) -> str:
        """A label's value in ``ps --format``: docker's ``.Label`` function; podman's labels are a map."""
        if self.name == "podman":
            return '{{index .Labels "' + label + '"}}'
        return '{{.Label "' + label + '"}}'

    def reap_stale(self) -> List[str]:
        """Remove this host's llem containers whose driver is no longer running (one killed with SIGKILL
        could not stop them); return their names."""
        from llem.serving.server import alive

        host, gone = socket.gethostname(), []
        for row in self.ours():
            pid = row["driver"]
            if row["host"] == host and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
                self.rm(row["name"])
                gone.append(row["name"])
        if gone:
            log.warning("removed %d container(s) left by llem drivers that are gone: %s", len(gone), ", ".join(gone))
        return gone

    def _call(self, args: List[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise RuntimeUnavailable(f"runtime.name={self.name}: `{' '.join(args[:2])}` failed: {exc}") from None
        if check and done.returncode != 0:
            raise RuntimeUnavailable(f"runtime.name={self.name}: `{' '.join(args[:3])}` failed: "
                                     f"{' '.join(done.stderr.split())[:300]}")
        return done


def container_name(key: str) -> str:
    """``llem-<key[:12]>-<driver pid>``: unique per driver, and says what it holds."""
    return f"llem-{key[:12]}-{os.getpid()}"


def build_hint(image: str) -> Optional[str]:
    """The command that builds one of llem's own images (``llem-<engine>:<version>``, the CPU test image);
    None for any other image (it is pulled)."""
    name = image.split("/")[-1].split(":")[0]
    if name.startswith("llem-") and name[5:] in ("pytorch", "vllm", "tensorrt"):
        return f"docker compose -f docker/compose.yaml build {name[5:]}"
    if name == "llem-test-cpu":
        return "docker/test/build.sh"
    return None


def _facts(image: str, inspect_json: str) -> ImageFacts:
    data = json.loads(inspect_json or "[]")
    item = data[0] if isinstance(data, list) and data else {}
    config = item.get("Config") or {}
    return ImageFacts(ref=image, id=item.get("Id", ""), repo_digests=list(item.get("RepoDigests") or []),
                      labels=dict(config.get("Labels") or {}))
