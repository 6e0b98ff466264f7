"""A real job under podman (runtime=podman) on the CPU: llem's test image, loaded into podman's own storage
(docker/test/podman.sh: runc, cgroupfs, explicit ulimits), measured in-process inside it, and no container left.

Needs podman, a docker daemon holding llem's test image (tests/test_containers.py builds it) and the
podman settings docker/test/podman.sh writes; skipped, saying so, without them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_llem
from tests.test_containers import CPU

pytestmark = pytest.mark.slow
IMAGE = "llem-test-cpu:latest"  # podman.sh loads this one from docker
PODMAN_SH = Path(__file__).resolve().parent.parent / "docker" / "test" / "podman.sh"


@pytest.fixture(scope="module")
def podman_env():
    if shutil.which("podman") is None or shutil.which("docker") is None:
        pytest.skip("podman and docker are both needed (the test image is built with docker, loaded into podman)")
    load = subprocess.run([str(PODMAN_SH), "load"], capture_output=True, text=True, timeout=900)
    if load.returncode != 0:
        pytest.skip(f"llem's test image could not be loaded into podman: {load.stderr.strip()[-300:]}")
    env = subprocess.run([str(PODMAN_SH), "env"], capture_output=True, text=True, timeout=60).stdout
    pairs = [p.split("=", 1) for p in env.replace("export ", "").split()]
    return {k: v.strip("'") for k, v in pairs}


def _podman_containers(env, label):
    out = subprocess.run(["podman", "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **env}).stdout
    return out.split()


def test_a_cpu_job_measures_inside_a_podman_container(podman_env, tmp_path):
    proc = run_llem(["runtime=podman", f"runtime.image={IMAGE}", *CPU, "hydra.run.dir=job"], cwd=tmp_path,
                    env_extra=podman_env, timeout=600)
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert proc.returncode == 0 and row["status"] == "ok", proc.stdout + proc.stderr + str(row.get("error"))
    assert row["runtime"] == "podman" and row["engine_version_inside"].startswith("transformers==")
    assert not _podman_containers(podman_env, "llem.driver")
