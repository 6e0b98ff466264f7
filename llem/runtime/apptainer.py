"""Apptainer (``runtime=apptainer``) behind the same small class as docker and podman, for HPC nodes.

The choices, and why:

- **Images** are ``.sif`` files (a path on the node) or ``docker://`` references (pulled into Apptainer's own
  cache, so they need ``runtime.pull=true``). There is no daemon: the check is the binary on PATH and the
  file present, in well under 2 s.
- **The persistent strategy is an instance**: ``apptainer instance start … <image> <name>`` holds the mounts
  and the environment, each job runs ``apptainer exec instance://<name> python -m llem.deploy.inside …`` in the
  foreground, ``apptainer instance stop`` ends it (its processes killed). An instance is named like every
  llem container, ``llem-<key[:12]>-<driver pid>``, so the next start on this host stops those whose driver is
  gone. A server (``server=launch``) is ``apptainer exec <options> <image> <argv>`` in the foreground, its own
  process group: stopping it signals that group.
- **Isolation**: ``--contain --cleanenv``, not ``--containall``: a private /tmp and /dev and no home folder, and
  none of the host's environment (its PYTHONPATH or LD_LIBRARY_PATH would break the image's Python), but the
  host's PID and IPC namespaces, so the server's processes stay visible to the driver (its memory, its stop).
  The network is the host's (Apptainer's default). Everything llem needs is bound at the same path
  (``--bind path:path``).
- **GPUs**: ``--nv`` (only when the job runs on CUDA) and ``CUDA_VISIBLE_DEVICES`` set to the job's GPU UUIDs.
- **Secrets** by name only: Apptainer's ``--env`` takes values, which ``ps`` would show, so a secret goes as
  ``APPTAINERENV_<NAME>`` in the environment of the ``apptainer`` process (never on its command line, never in
  a file); Apptainer sets ``<NAME>`` inside from it, ``--cleanenv`` notwithstanding. Plain settings (HF_HOME,
  CUDA_VISIBLE_DEVICES) go as ``--env NAME=value``.
- The user is the caller (Apptainer always runs as the user who started it), so no ``--user``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from llem.config.runtime import APPTAINER_IMAGES
from llem.runtime.containers import (
    CALL_TIMEOUT_S,
    CHECK_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ContainerRuntime,
    ContainerSpec,
    ImageFacts,
    RuntimeUnavailable,
)

INSTALL_HINT = "install Apptainer (apptainer.org/docs/admin), or `module load apptainer` where modules have it"
REMOTE = APPTAINER_IMAGES
NAME_PID = re.compile(r"^llem-[0-9a-f]{1,12}-(\d+)$")
_digests: Dict[tuple, str] = {}  # (path, size, mtime) → sha256 of the file: hashed once per driver


class Apptainer(ContainerRuntime):
    """``apptainer``: instances for in-process jobs, a foreground exec for a server."""

    kills_by_group = True  # a server's container is its process group (no daemon holds it)

    def __init__(self, global_args: Sequence[str] = ()) -> None:
        super().__init__("apptainer", global_args)
        self.images: Dict[str, str] = {}  # a foreground container's name → its image (for exec_output)

    # -- check -------------------------------------------------------------------------------------------
    def check(self, image: str, image_key: str, pull: bool) -> Optional[ImageFacts]:
        """The binary on PATH and the .sif present (a remote reference only with runtime.pull=true)."""
        if shutil.which("apptainer") is None:
            raise RuntimeUnavailable(f"runtime.name=apptainer: `apptainer` is not on PATH: {INSTALL_HINT}, or use "
                                     "runtime=host")
        if image.startswith(REMOTE):
            if not pull:
                raise RuntimeUnavailable(
                    f"{image_key}={image!r} is a registry reference and runtime.pull=false: `apptainer pull "
                    f"<file>.sif {image}` and set runtime.image=<file>.sif, or set runtime.pull=true")
            return None
        if not Path(image).is_file():
            raise RuntimeUnavailable(f"{image_key}={image!r} is not a file on this node: build it (`apptainer build "
                                     f"{image} docker-daemon://<image>` where docker holds it, or `apptainer pull "
                                     f"{image} docker://<image>`)")
        return ImageFacts(ref=image, id=f"file:{image}", labels=self._labels(image))

    def _labels(self, image: str) -> Dict[str, str]:
        """The image's labels (a docker image's survive its conversion), read within the check's budget."""
        try:
            done = subprocess.run([*self.base, "inspect", "--labels", "--json", image], capture_output=True,
                                  text=True, timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
            data = json.loads(done.stdout or "{}") if done.returncode == 0 else {}
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return {}
        labels = ((data.get("data") or {}).get("attributes") or {}).get("labels") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in (labels or {}).items()}

    def inspect_image(self, image: str) -> ImageFacts:
        """A .sif's content digest (sha256 of the file, part of load; once per file per driver); a remote
        reference is its own id (Apptainer keeps its pulled copy in its cache)."""
        if image.startswith(REMOTE):
            return ImageFacts(ref=image, id=image)
        path = Path(image)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            _digests[key] = f"sha256:{digest.hexdigest()}"
        return ImageFacts(ref=image, id=_digests[key], labels=self._labels(image))

    def pull(self, image: str, timeout_s: float) -> None:
        """A remote reference pulled and converted into Apptainer's cache (``exec <image> true``: part of load,
        bounded by ``timeout_s``), so that starting the instance after it is quick; nothing for a .sif."""
        if not image.startswith(REMOTE):
            return
        try:
            done = subprocess.run([*self.base, "exec", image, "true"], capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeUnavailable(f"runtime.pull: pulling {image} took more than {timeout_s:g} s") from None
        if done.returncode != 0:
            raise RuntimeUnavailable(f"runtime.pull: `apptainer exec {image} true` failed: "
                                     f"{' '.join(done.stderr.split())[:300]}")

    # -- command lines -----------------------------------------------------------------------------------
    def options(self, spec: ContainerSpec) -> List[str]:
        """What every container gets: contained, a clean environment, the binds, the GPUs, plain settings."""
        argv = ["--contain", "--cleanenv"]
        if spec.gpus:
            argv.append("--nv")
        for path in spec.mounts:
            argv += ["--bind", f"{path}:{path}"]
        env = dict(spec.env)
        if spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        return [*argv, *spec.extra]

    def run_argv(self, spec: ContainerSpec, name: str, *, detach: bool) -> List[str]:
        """detach: ``instance start`` (the persistent container); else ``exec`` of the spec's command."""
        if detach:
            return [*self.base, "instance", "start", *self.options(spec), spec.image, name]
        self.images[name] = spec.image
        return [*self.base, "exec", *self.options(spec), spec.image, *spec.command]

    def gpu_args(self, uuids: Sequence[str]) -> List[str]:
        return ["--nv"] if uuids else []

    def exec_argv(self, container: str, command: Sequence[str], env_names: Sequence[str] = (),
                  user: Optional[str] = None) -> List[str]:
        """``exec`` in a running instance; secrets come from :meth:`child_env`, never from this line."""
        return [*self.base, "exec", "--cleanenv", f"instance://{container}", *command]

    def child_env(self, env_names: Sequence[str]) -> Optional[Dict[str, str]]:
        """The apptainer process's environment: each secret also as APPTAINERENV_<NAME> (Apptainer sets
        <NAME> inside from it); the values never reach a command line."""
        env = dict(os.environ)
        for name in env_names:
            if name in os.environ:
                env[f"APPTAINERENV_{name}"] = os.environ[name]
        return env

    def rm_argv(self, container: str) -> List[str]:
        return [*self.base, "instance", "stop", container]

    # -- running containers ------------------------------------------------------------------------------
    def rm(self, container: str) -> None:
        """Stop the instance ``container`` (a foreground container is stopped by its process group)."""
        if container in self.images:
            return
        try:
            subprocess.run(self.rm_argv(container), capture_output=True, timeout=STOP_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError):
            pass

    def running(self, container: str) -> bool:
        return container in self.instances()

    def instances(self) -> List[str]:
        """The names of this user's running instances."""
        try:
            done = subprocess.run([*self.base, "instance", "list", "--json"], capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
            data = json.loads(done.stdout or "{}")
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return []
        return [str(i.get("instance")) for i in (data.get("instances") or []) if isinstance(i, dict)]

    def logs(self, container: str, tail: int) -> str:
        return ""  # an instance's output goes to Apptainer's own log files; a job's exec output is llem's

    def exec_output(self, container: str, command: Sequence[str]) -> Optional[str]:
        """What a short command prints in ``container`` (an instance, or a foreground container's image)."""
        target = self.images.get(container) or f"instance://{container}"
        try:
            done = subprocess.run([*self.base, "exec", "--cleanenv", target, *command], capture_output=True,
                                  text=True, timeout=CALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def ours(self) -> List[Dict[str, str]]:
        """llem's instances (named ``llem-<key>-<driver pid>``; instances are per user and per node)."""
        import socket

        rows = []
        for name in self.instances():
            found = NAME_PID.match(name)
            if found:
                rows.append({"name": name, "driver": found.group(1), "host": socket.gethostname()})
        return rows
