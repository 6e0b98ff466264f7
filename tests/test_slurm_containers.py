"""Containers inside SLURM jobs: a sweep submitted with hydra/launcher=slurm whose jobs run in the CPU test
image under docker — llem starts the container itself inside each SLURM job (the launcher has no srun
arguments), and DOCKER_HOST reaches the job through sbatch's exported environment. On the one-node cluster
of tests/slurm_cluster.py; skipped, saying why, without SLURM or without the test image."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import FAST, run_llem

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CPU = [*FAST, "device=cpu", "warmup.batches=0", "measure.min_window_s=0", "progress=false"]


def test_slurm_jobs_measure_inside_the_container(cluster, docker_image, tmp_path):
    proc = run_llem(["hydra/launcher=slurm", "-m", *docker_image.overrides(), "seed=0,1", *CPU,
                     "hydra.sweep.dir=sweep"], cwd=tmp_path, env_extra={**cluster.env(), **docker_image.env},
                    timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "2 ok, 0 skipped, 0 failed" in out, out + cluster.logs()
    rows = [pd.read_parquet(p).iloc[0] for p in sorted((tmp_path / "sweep").glob("*/results.parquet"))]
    assert [r["runtime"] for r in rows] == ["docker", "docker"]
    assert all(r["runtime_image"] == docker_image.image and r["engine_version_inside"] for r in rows)
    assert len({r["env.slurm_job_id"] for r in rows}) == 2 and all(r["env.slurm_job_id"] for r in rows)
