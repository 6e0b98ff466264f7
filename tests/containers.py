"""Containers for tests: a reachable docker or podman holding llem's CPU test image, current for this checkout.

``require_image(runtime)`` returns a ``ContainerImage`` or skips the test saying why and how to build the
image; with ``LLEM_REQUIRE_CONTAINERS=1`` (CI sets it) it fails instead, so a CI machine that lost its
daemon or image cannot pass by skipping. The image (docker/test/build.sh) is current when its labels
``llem.version`` and ``llem.source`` are this checkout's: the code inside is the code under test.
The fixtures in tests/conftest.py (``docker_image``, ``podman_image``, ``container_image``) call it.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import runpy
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "llem-test-cpu:latest"
REQUIRE_ENV = "LLEM_REQUIRE_CONTAINERS"
RUNTIMES = ("docker", "podman")
BUILD = {"docker": "docker/test/build.sh", "podman": "LLEM_CONTAINER_CLI=podman docker/test/build.sh"}
PROBE_TIMEOUT_S = 20
_names = itertools.count()


def image_cache() -> Path:
    """Where docker/test/build.sh and podman.sh keep what they make (the same default as theirs)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llem-images"
    return Path(os.environ.get("LLEM_IMAGE_CACHE") or default)


def ci_socket() -> Path:
    """The socket of the docker daemon .ci/run starts (the same default as .ci/run's)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llem-ci"
    return Path(os.environ.get("LLEM_CI_DIR") or default) / "docker.sock"


@functools.lru_cache(maxsize=1)
def checkout_source() -> str:
    """The digest docker/test/build.sh labels the image with (llem.source), for this checkout."""
    return runpy.run_path(str(ROOT / "docker" / "test" / "source_digest.py"))["source_digest"](ROOT)


def checkout_version() -> str:
    import llem

    return llem.__version__


@dataclass(frozen=True)
class ContainerImage:
    """llem's test image in a reachable runtime, and how to run it."""

    runtime: str  # docker | podman: the CLI, and llem's runtime.name
    image: str
    image_id: str
    env: Dict[str, str] = field(default_factory=dict)  # what the CLI needs on top of os.environ

    def environ(self) -> Dict[str, str]:
        """The environment for the CLI, or for llem when it runs the CLI."""
        return {**os.environ, **self.env}

    def overrides(self) -> List[str]:
        """llem's command-line overrides that run a job in this image."""
        return [f"runtime={self.runtime}", f"runtime.image={self.image}"]

    def run(self, argv: Sequence[str], *, mounts: Sequence[Path] = (), workdir: Optional[Path] = None,
            as_host_user: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess:
        """``argv`` in a fresh container as llem runs them: --init, --network=host, the host's uid:gid, each
        mount at the same path inside. A container outliving ``timeout_s`` is removed, then TimeoutExpired."""
        name = f"llem-test-{os.getpid()}-{next(_names)}"
        cmd = [self.runtime, "run", "--rm", "--init", "--network=host", "--name", name]
        if as_host_user:
            cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
        for path in mounts:
            cmd += ["-v", f"{path}:{path}"]
        if workdir:
            cmd += ["-w", str(workdir)]
        try:
            return subprocess.run([*cmd, self.image, *argv], env=self.environ(), capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            subprocess.run([self.runtime, "rm", "-f", name], env=self.environ(), capture_output=True,
                           timeout=PROBE_TIMEOUT_S)
            raise


def runtime_env(runtime: str) -> Dict[str, str]:
    """DOCKER_HOST (docker) or podman's configuration files (podman) when the caller did not set them: the
    daemon .ci/run starts, the storage docker/test/podman.sh fills."""
    if runtime == "docker":
        if "DOCKER_HOST" not in os.environ and ci_socket().exists():
            return {"DOCKER_HOST": f"unix://{ci_socket()}"}
        return {}
    conf = image_cache() / "podman"
    if "CONTAINERS_STORAGE_CONF" in os.environ or not (conf / "storage.conf").exists():
        return {}
    return {"CONTAINERS_CONF": str(conf / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf")}


def _cli(runtime: str, env: Dict[str, str], *args: str) -> Tuple[int, str]:
    try:
        proc = subprocess.run([runtime, *args], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"no answer in {PROBE_TIMEOUT_S} s"
    lines = (proc.stdout if proc.returncode == 0 else proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def find_image(runtime: str) -> Tuple[Optional[ContainerImage], str]:
    """(the image, "") when ``runtime`` answers and holds the current test image; else (None, why not)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: one of {RUNTIMES}")
    build = f"build it: {BUILD[runtime]}"
    if shutil.which(runtime) is None:
        return None, f"{runtime}: no {runtime} command on PATH"
    env = runtime_env(runtime)
    where = {**os.environ, **env}.get("DOCKER_HOST" if runtime == "docker" else "CONTAINERS_STORAGE_CONF", "(default)")
    where = f"{'DOCKER_HOST' if runtime == 'docker' else 'CONTAINERS_STORAGE_CONF'}={where}"
    probe = ("version", "--format", "{{.Server.Version}}") if runtime == "docker" else ("info", "--format",
                                                                                          "{{.Store.GraphRoot}}")
    rc, said = _cli(runtime, env, *probe)
    if rc != 0:
        return None, f"{runtime}: does not answer ({where}): {said}"
    rc, said = _cli(runtime, env, "image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}}", IMAGE)
    if rc != 0:
        return None, f"{runtime}: no image {IMAGE} ({where}): {build}"
    image_id, labels = said.split(" ", 1)
    labels = json.loads(labels) or {}
    version, source = labels.get("llem.version"), labels.get("llem.source")
    if version != checkout_version():
        return None, (f"{runtime}: {IMAGE} holds llem {version}, this checkout is {checkout_version()}: "
                      f"rebuild it: {BUILD[runtime]}")
    if source != checkout_source():
        return None, f"{runtime}: {IMAGE} was built from other llem sources than this checkout's: " \
                     f"rebuild it: {BUILD[runtime]}"
    return ContainerImage(runtime, IMAGE, image_id, env), ""


@functools.cache
def _found(runtime: str) -> Tuple[Optional[ContainerImage], str]:
    return find_image(runtime)


def require_image(runtime: str) -> ContainerImage:
    """The current test image in ``runtime`` (looked up once per test process), else skip saying why; with
    LLEM_REQUIRE_CONTAINERS=1, fail."""
    image, why = _found(runtime)
    if image is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why} ({REQUIRE_ENV}=1: containers are required here)", pytrace=False)
        pytest.skip(why)
    return image
