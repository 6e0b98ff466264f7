"""Shared fixtures: compose llem's real config (Hydra's compose API) and run llem as users do."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import pytest

from llem.backends import register_all
from llem.config import conf_dir

register_all()
# Each test worker (xdist) has its own lock folder: CPU jobs of different tests would otherwise wait on
# each other for the host (llem.support.locks.host_lock), which is right for measurements and slow for tests.
# Set in every process that imports this (each worker does): an inherited value is the controller's, shared.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["LLEM_LOCK_DIR"] = tempfile.mkdtemp(prefix=f"llem-test-locks-{WORKER}-")
# The workers share the host's cores: torch's OpenMP threads, one per core in every worker and in every job it
# starts, spin waiting for each other when there are more of them than cores (4 workers on 2 cores: a CPU job
# beside the others took 3× as long). Each worker, and what it starts, gets its share of the cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))


HEAVY_MARKERS = ("slow", "slurm")


def pytest_collection_modifyitems(session, config, items):
    """Files that run real jobs first, the quick files after them: each file runs on one worker (--dist
    loadfile, in collection order with --no-loadscope-reorder), so a long file started last would leave one
    worker running it while the others sit idle; quick files fill the gaps at the end instead."""

    def heavy(item) -> bool:
        return any(item.get_closest_marker(m) for m in HEAVY_MARKERS)

    heavy_files = {item.path for item in items if heavy(item)}
    items.sort(key=lambda item: item.path not in heavy_files)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def compose_cfg():
    """compose_cfg(overrides) → the DictConfig a job would receive (tests/compose.py: Hydra's compose, its
    defaults list read once per set of group choices)."""
    from tests.compose import Composer

    return Composer(conf_dir())


@pytest.fixture(scope="session")
def trace():
    """The real H100 NVML trace (tests/data/), for replay tests."""
    from tests.replay import trace_or_fail

    return trace_or_fail()


# Fast settings for end-to-end runs on CPU: few short requests, no waits.
FAST = [
    "dataset.num_requests=4",
    "input_len=16",
    "output_len=8",
    "batch=2",
    "baseline.settle_s=0",
    "baseline.loaded_idle_s=0",
]


def llem_env(env_extra: dict = None) -> dict:
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(env_extra or {})
    return env


def run_llem(args: List[str], cwd: Path, env_extra: dict = None, check: bool = False, timeout: int = 300):
    """``python -m llem ARGS`` in a subprocess, from ``cwd`` (the installed or source package)."""
    proc = subprocess.run([sys.executable, "-m", "llem", *args], cwd=cwd, env=llem_env(env_extra),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"llem failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(compose_cfg, overrides: List[str], job_dir: Path) -> dict:
    """One job measured in this process (a job's own code path, minus Hydra and the spawned process):
    end-to-end through workload, engine, meters and writer, without paying a new interpreter."""
    from llem.config import to_config
    from llem.run.job import run_config

    config = to_config(compose_cfg([*FAST, "isolate=false", *overrides]))
    job_dir.mkdir(parents=True, exist_ok=True)
    return run_config(config, job_dir)


@pytest.fixture(scope="session")
def main_sweep(tmp_path_factory):
    """One real multirun shared by the sweep-dir, aggregate and notebook tests (tests/test_aggregate.py):
    2 batch sizes × 2 repeats, measured in-process (isolation has tests of its own), and what the driver
    printed."""
    root = tmp_path_factory.mktemp("main_sweep")
    proc = run_llem([*MAIN_SWEEP, "hydra.sweep.dir=sweep"], cwd=root, check=True)
    return root / "sweep", proc.stdout + proc.stderr

MAIN_SWEEP = ["-m", *FAST, "isolate=false", "repeat=0,1", "batch=1,2"]


def served_cache(folder: Path, tmp_path_factory) -> Path:
    """A fresh ``cache_dir`` under ``folder`` for jobs that launch a server, its ``served/`` (llem's random-weight
    checkpoints, ~5 CPU-s each to write) shared by every test and xdist worker of the run: one checkpoint a
    run, not one a test. Compile caches and the rest stay the test's own."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "served-checkpoints"
    shared.mkdir(exist_ok=True)
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "served").symlink_to(shared, target_is_directory=True)
    return cache


def fake_distribution(root: Path, name: str, version: str) -> None:
    """A ``<name>-<version>.dist-info`` beside a fake package's source, so metadata reports its version."""
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """on_path(module, build) → the fake source tree ``build(tmp_path)`` makes, importable ahead of any
    installed ``module`` (whose cached import is dropped)."""

    def _put(module: str, build):
        monkeypatch.delitem(sys.modules, module, raising=False)
        pkg = build(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        return pkg

    return _put


# -- containers (tests/containers.py): skipped without a daemon or a current test image, failed instead when
# LLEM_REQUIRE_CONTAINERS=1 -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def docker_image():
    """llem's CPU test image (llem-test-cpu:latest) in a reachable docker: a tests.containers.ContainerImage."""
    from tests.containers import require_image

    return require_image("docker")


@pytest.fixture(scope="session")
def podman_image():
    """llem's CPU test image in podman (storage of docker/test/podman.sh): a tests.containers.ContainerImage."""
    from tests.containers import require_image

    return require_image("podman")


@pytest.fixture(scope="session", params=["docker", "podman"])
def container_image(request):
    """The test once in docker, once in podman (each skipped or failed on its own)."""
    from tests.containers import require_image

    return require_image(request.param)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM cluster (tests/slurm_cluster.py) for the module's tests, stopped after them; the tests
    skip, saying why, without one."""
    from tests import slurm_cluster

    why = slurm_cluster.unavailable()
    if why:
        pytest.skip(why)
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield started
    started.stop()
