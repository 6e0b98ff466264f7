"""A real job under podman (runtime=podman) on the CPU: llem's test image in podman's own storage
(docker/test/podman.sh: runc, cgroupfs, explicit ulimits), measured in-process inside it, no container left.

It runs where the ``podman_image`` fixture finds the test image built from this checkout (tests/containers.py),
and is skipped, saying why, elsewhere."""

from __future__ import annotations

import subprocess

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_llem
from tests.test_containers_jobs import CPU

pytestmark = pytest.mark.slow


def test_a_cpu_job_measures_inside_a_podman_container(podman_image, tmp_path):
    proc = run_llem([*podman_image.overrides(), *CPU, "hydra.run.dir=job"], cwd=tmp_path, env_extra=podman_image.env,
                    timeout=600)
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert proc.returncode == 0 and row["status"] == "ok", proc.stdout + proc.stderr + str(row.get("error"))
    assert row["runtime"] == "podman" and row["engine_version_inside"].startswith("transformers==")
    left = subprocess.run(["podman", "ps", "--all", "--filter", "label=llem.driver", "--format", "{{.Names}}"],
                          capture_output=True, text=True, timeout=60, env=podman_image.environ()).stdout
    assert not left.split()
