"""runtime=auto: the host where the engine imports, else the engine's image under the first container runtime
that answers (docker, then podman), else a check-stage failure naming runtime=auto, the engine's install
hint and the runtimes tried. The two questions (does it import here, does a runtime answer) are simulated;
a real job with auto on the host is in tests/test_containers_jobs.py."""

from __future__ import annotations

import time

import pytest

from llem import __version__
from llem.config import config_hash, to_config
from llem.deploy.auto import answers, choose
from llem.deploy.choose import pick, place_of
from llem.deploy.held import Held
from llem.support.errors import EngineUnavailable

MISSING = 'backend=pytorch needs torch, transformers (torch missing): pip install ".[pytorch]" from a clone of llem'


def _config(compose_cfg, *overrides):
    return to_config(compose_cfg(["runtime=auto", *overrides]))


def imports_nothing(config, device):
    return MISSING


def answering(*names):
    return lambda name, global_args: None if name in names else f"{name}: not on PATH"


def test_an_engine_that_imports_on_the_host_runs_on_the_host(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=lambda c, d: None, probe=answering("docker"))
    assert choice.config.runtime.name == "host"
    assert "backend=pytorch imports on this host" in choice.reason


def test_auto_on_the_host_has_the_host_runtime_hash(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=lambda c, d: None, probe=answering())
    assert config_hash(choice.config) == config_hash(to_config(compose_cfg(["runtime=host"])))


def test_an_engine_that_does_not_import_runs_in_its_image_under_docker(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=imports_nothing, probe=answering("docker", "podman"))
    assert choice.config.runtime.name == "docker"
    assert f"the job runs in llem-pytorch:{__version__}" in choice.reason
    assert "torch missing" in choice.reason


def test_podman_is_chosen_when_docker_does_not_answer(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=imports_nothing, probe=answering("podman"))
    assert choice.config.runtime.name == "podman"


def test_auto_in_a_container_has_that_runtimes_hash(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=imports_nothing, probe=answering("docker"))
    assert config_hash(choice.config) == config_hash(to_config(compose_cfg(["runtime=docker"])))


def test_server_launch_uses_the_engines_server_image(compose_cfg):
    config = _config(compose_cfg, "server=launch", "runtime.image=example/server:1")
    choice = choose(config, "cpu", imports=imports_nothing, probe=answering("docker"))
    assert "the job runs in example/server:1" in choice.reason


def test_nothing_found_names_auto_the_install_hint_and_the_runtimes_tried(compose_cfg):
    choice = choose(_config(compose_cfg), "cpu", imports=imports_nothing, probe=answering())
    assert choice.config is None
    assert choice.reason.startswith("runtime=auto found no place for backend=pytorch")
    assert 'pip install ".[pytorch]"' in choice.reason
    assert "docker: not on PATH; podman: not on PATH" in choice.reason


def test_an_external_server_stays_on_the_host_without_asking(compose_cfg):
    config = _config(compose_cfg, "server=external", "server.url=http://127.0.0.1:9")
    choice = choose(config, "cpu", imports=imports_nothing, probe=answering())
    assert choice.config.runtime.name == "host"


def test_isolate_false_cannot_go_into_a_container(compose_cfg):
    choice = choose(_config(compose_cfg, "isolate=false"), "cpu", imports=imports_nothing, probe=answering("docker"))
    assert choice.config is None
    assert "isolate=false" in choice.reason


def test_a_refused_job_fails_at_its_check(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setattr("llem.deploy.auto.host_imports", imports_nothing)
    monkeypatch.setattr("llem.deploy.auto.answers", lambda name, global_args: f"{name}: not on PATH")
    place = place_of(_config(compose_cfg), tmp_path)
    with pytest.raises(EngineUnavailable, match="runtime=auto found no place"):
        pick(place, Held()).check()


def test_the_host_check_finds_this_hosts_pytorch(compose_cfg):
    from llem.deploy.auto import host_imports

    assert host_imports(_config(compose_cfg), "cpu") is None


def test_a_runtime_not_on_path_is_named_at_once(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    t0 = time.monotonic()
    assert answers("docker") == "docker: not on PATH"
    assert time.monotonic() - t0 < 0.5


def test_a_real_job_with_auto_runs_pytorch_on_the_host_and_says_why(compose_cfg, tmp_path):
    """The job's own path, measured in this process: the choice is the row's runtime and one of its warnings."""
    import pyarrow.parquet as pq

    from tests.conftest import run_in_process

    run_in_process(compose_cfg, ["runtime=auto", "device=cpu", "warmup.batches=0", "measure.min_window_s=0",
                                 "progress=false"], tmp_path / "job")
    row = pq.read_table(tmp_path / "job" / "results.parquet").to_pylist()[0]
    assert row["status"] == "ok", row.get("error")
    assert row["runtime"] == "host"
    assert any("runtime=auto chose host: backend=pytorch imports on this host" in w for w in row["warnings"])
