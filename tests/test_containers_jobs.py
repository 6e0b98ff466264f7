"""Real jobs in real containers on the CPU (runtime=docker): the measurement process inside llem's test image,
the engine's own server (transformers serve) inside it, a host-and-docker sweep giving the same tokens,
reuse of a container across consecutive jobs, a container dying in the window (a failed row with its last
lines), a signal leaving no container, a killed driver's container removed by the next start, and a missing
image failing at the check in under 2 s.

They run in the docker that the ``docker_image`` fixture finds holding llem's CPU test image built from this
checkout (tests/containers.py; build it with docker/test/build.sh), and are skipped, saying why, without one."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem.runtime import ContainerRuntime, RuntimeUnavailable
from tests.conftest import FAST, llem_env, run_llem

pytestmark = pytest.mark.slow
CPU = [*FAST, "device=cpu", "warmup.batches=0", "measure.min_window_s=0", "progress=false"]


def _rows(sweep: Path):
    rows = [pq.read_table(f).to_pylist()[0] for f in sorted(sweep.glob("*/results.parquet"))]
    return sorted(rows, key=lambda r: r["started_at"] or "")


def _containers(image, label: str):
    out = subprocess.run(["docker", "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, timeout=30, env=image.environ()).stdout
    return out.split()


@pytest.fixture(scope="module")
def host_and_docker(docker_image, tmp_path_factory):
    """One sweep: the same two jobs on the host, then in the container (the second reusing the first's; the
    sweeper varies the key that sorts last fastest: seed)."""
    root = tmp_path_factory.mktemp("containers")
    proc = run_llem(["-m", *CPU, "runtime=host,docker", "seed=0,1", f"runtime.image={docker_image.image}",
                     "hydra.sweep.dir=sweep"], cwd=root, env_extra=docker_image.env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _rows(root / "sweep"), proc.stdout + proc.stderr, docker_image


def test_a_cpu_job_measures_inside_the_container(host_and_docker):
    inside = [r for r in host_and_docker[0] if r["runtime"] == "docker"]
    assert len(inside) == 2 and all(r["status"] == "ok" for r in inside)
    first = inside[0]
    assert first["runtime_image"] == host_and_docker[2].image and first["runtime_image_digest"].startswith("sha256:")
    assert first["engine_version_inside"].startswith("transformers==") and first["container_start_s"] > 0


def test_host_and_docker_give_the_same_tokens(host_and_docker):
    by = {(r["runtime"], r["cfg.seed"]): r for r in host_and_docker[0]}
    for seed in (0, 1):
        host, docker = by[("host", seed)], by[("docker", seed)]
        assert host["workload_sha256"] == docker["workload_sha256"]
        assert host["output_tokens_total"] == docker["output_tokens_total"] == host["num_requests"] * 8
        assert host["runtime"] == "host" and host["container_null_reason"].startswith("runtime=host")
    assert by[("host", 0)]["workload_sha256"] != by[("host", 1)]["workload_sha256"]


def test_consecutive_jobs_with_the_same_container_share_it(host_and_docker):
    first, second = [r for r in host_and_docker[0] if r["runtime"] == "docker"]
    assert first["container_reused"] is False and second["container_reused"] is True
    assert second["container_start_s"] is None
    assert first["started_cold"] is True and second["started_cold"] is False


def test_the_sweep_leaves_no_container(host_and_docker):
    assert "container llem-" in host_and_docker[1] and not _containers(host_and_docker[2], "llem.driver")


def test_a_served_job_runs_the_engine_s_server_inside_the_container(docker_image, tmp_path):
    proc = run_llem([*docker_image.overrides(), "server=launch", *CPU, "hydra.run.dir=job"], cwd=tmp_path,
                    env_extra=docker_image.env, timeout=600)
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert proc.returncode == 0 and row["status"] == "ok", proc.stdout + proc.stderr
    assert row["server_mode"] == "launch" and row["runtime"] == "docker" and row["server_start_s"] > 0
    assert row["engine_version_inside"].startswith("transformers==")
    assert row["cpu_rss_peak_mib"] > 100  # the server's processes, seen from the host through the container
    assert (tmp_path / "job" / "server.log").stat().st_size > 0 and not _containers(docker_image, "llem.driver")


def test_sigterm_leaves_no_container(docker_image, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "llem", *docker_image.overrides(), "server=launch", *CPU,
                             "hydra.run.dir=job"], cwd=tmp_path, env=llem_env(docker_image.env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mine = f"llem.driver={proc.pid}"
    deadline = time.monotonic() + 120
    while not _containers(docker_image, mine) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _containers(docker_image, mine), "no container was started"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and not _containers(docker_image, mine), out


def test_a_killed_driver_s_container_is_removed_by_the_next_start(docker_image, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"llem-stale-{dead.pid}"
    subprocess.run(["docker", "run", "--rm", "--detach", "--init", "--network=host", "--name", name, "--label",
                    f"llem.driver={dead.pid}", "--label", f"llem.host={socket.gethostname()}", docker_image.image,
                    "sleep", "infinity"], check=True, capture_output=True, timeout=60, env=docker_image.environ())
    for key, value in docker_image.env.items():
        monkeypatch.setenv(key, value)
    assert name in ContainerRuntime("docker").reap_stale()
    assert not _containers(docker_image, f"llem.driver={dead.pid}")


def test_a_missing_image_fails_at_the_check_within_2_s(docker_image, tmp_path, monkeypatch):
    for key, value in docker_image.env.items():
        monkeypatch.setenv(key, value)
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as err:
        ContainerRuntime("docker").check("llem-absent:0", "runtime.image", pull=False)
    assert time.monotonic() - t0 < 2
    assert "runtime.image='llem-absent:0' is not present locally" in str(err.value)
    assert "docker pull llem-absent:0" in str(err.value)
    proc = run_llem(["runtime=docker", "runtime.image=llem-absent:0", *CPU, "hydra.run.dir=job"], cwd=tmp_path,
                    env_extra=docker_image.env)
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert proc.returncode == 1 and row["error_stage"] == "check" and "runtime.image" in row["error"]


def _job_in_its_window(image, tmp_path) -> subprocess.Popen:
    """A containerised job started in the background, returned once its inside says it is measuring."""
    proc = subprocess.Popen([sys.executable, "-m", "llem", *image.overrides(), *CPU, "dataset.num_requests=32",
                             "output_len=128", "hydra.run.dir=job"], cwd=tmp_path, env=llem_env(image.env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stage, deadline = tmp_path / "job" / ".llem-stage", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if stage.exists() and stage.read_text().strip() == "measure":
            break
        time.sleep(0.1)
    return proc


def test_a_container_that_dies_in_the_window_is_a_failed_row_with_its_last_lines(docker_image, tmp_path):
    proc = _job_in_its_window(docker_image, tmp_path)
    for name in _containers(docker_image, f"llem.driver={proc.pid}"):
        subprocess.run(["docker", "kill", name], capture_output=True, timeout=60, env=docker_image.environ())
    out, _ = proc.communicate(timeout=120)
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert proc.returncode == 1 and row["status"] == "failed" and row["error_stage"] == "measure", out
    assert "exited with code 137 during measure" in row["error"] and "measuring 32 requests" in row["error"]
    assert (tmp_path / "job" / "container.log").stat().st_size > 0


def test_sigint_during_an_in_process_job_names_its_stage_and_leaves_no_container(docker_image, tmp_path):
    proc = _job_in_its_window(docker_image, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted by SIGINT during measure" in out, out
    assert not _containers(docker_image, f"llem.driver={proc.pid}")
    assert not (tmp_path / "job" / "results.parquet").exists()
