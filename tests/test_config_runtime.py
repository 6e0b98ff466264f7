"""The runtime group: host by default, a container runtime refused before anything loads when it cannot
work (an external server, isolate=false, no image, a bad image reference, a run flag llem sets itself),
and config_hash unchanged on the host but naming the image a container job runs in."""

from __future__ import annotations

import pytest

from llem import __version__
from llem.config import config_hash, image_for, to_config
from llem.support.errors import ConfigError


def _refused(compose_cfg, overrides):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg(overrides))
    return str(err.value)


def test_the_default_runtime_is_the_host(compose_cfg):
    config = to_config(compose_cfg([]))
    assert config.runtime.name == "host" and image_for(config.runtime, config.backend, "none") is None


def test_each_engine_names_its_llem_image_at_llem_s_version(compose_cfg):
    for backend in ("pytorch", "vllm", "tensorrt"):
        config = to_config(compose_cfg([f"backend={backend}", "runtime=docker"]))
        assert image_for(config.runtime, config.backend, "none") == f"llem-{backend}:{__version__}"


def test_a_launched_server_runs_in_the_engine_s_server_image(compose_cfg):
    config = to_config(compose_cfg(["backend=vllm", "runtime=podman", "server=launch"]))
    assert image_for(config.runtime, config.backend, "launch").startswith("vllm/vllm-openai:")


def test_runtime_image_overrides_the_engine_s(compose_cfg):
    config = to_config(compose_cfg(["runtime=docker", "runtime.image=llem-test-cpu:latest", "server=launch"]))
    assert image_for(config.runtime, config.backend, "launch") == "llem-test-cpu:latest"


def test_an_unknown_runtime_is_refused_naming_the_key(compose_cfg):
    assert "runtime.name='lxc' is invalid: allowed host, docker, podman" in _refused(compose_cfg, ["runtime.name=lxc"])


def test_an_external_server_in_a_container_is_refused(compose_cfg):
    message = _refused(compose_cfg, ["runtime=docker", "server=external", "server.url=http://127.0.0.1:8000"])
    assert "runtime.name='docker'" in message and "server=external" in message


def test_a_container_needs_a_measurement_process_of_its_own(compose_cfg):
    assert "isolate=False is invalid" in _refused(compose_cfg, ["runtime=docker", "isolate=false"])


def test_an_engine_without_an_image_is_refused_naming_the_key_to_set(compose_cfg):
    message = _refused(compose_cfg, ["runtime=docker", "backend.image=null"])
    assert message.startswith("backend.image=None is invalid") and "runtime.image=" in message


def test_a_bad_image_reference_is_refused(compose_cfg):
    assert "runtime.image='Llem:latest' is invalid" in _refused(compose_cfg, ["runtime=docker",
                                                                             "runtime.image=Llem:latest"])


def test_a_run_flag_llem_sets_itself_is_refused(compose_cfg):
    message = _refused(compose_cfg, ["runtime=docker", "runtime.args=['--network=bridge']"])
    assert "runtime.args" in message and "--network" in message


def test_the_host_runtime_leaves_config_hash_as_it_was(compose_cfg):
    host = to_config(compose_cfg([]))
    other_images = to_config(compose_cfg(["backend.image=elsewhere:1", "runtime.pull=true"]))
    assert config_hash(host) == config_hash(other_images)


def test_a_container_job_hashes_the_image_it_runs_in(compose_cfg):
    one = to_config(compose_cfg(["runtime=docker", "runtime.image=a:1"]))
    other = to_config(compose_cfg(["runtime=docker", "runtime.image=a:2"]))
    same = to_config(compose_cfg(["runtime=docker", "backend.image=a:1", "runtime.reuse=false"]))
    assert config_hash(one) != config_hash(other) and config_hash(one) == config_hash(same)
