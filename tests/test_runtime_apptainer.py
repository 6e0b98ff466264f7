"""Apptainer's command lines, one behaviour each, against the recorded lines llem must produce: an instance
for the persistent container, a foreground exec for a server, contained with a clean environment, binds at
the same path, --nv and CUDA_VISIBLE_DEVICES only with GPUs, secrets only as APPTAINERENV_<NAME> in the
client's environment; images as .sif paths or docker:// references; the check in under 2 s. One test runs a
real container where ``apptainer`` is on PATH (skipped, saying why, elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from llem.config import config_hash, to_config
from llem.runtime import ContainerSpec, RuntimeUnavailable, for_config
from llem.runtime.apptainer import Apptainer
from llem.support.errors import ConfigError

SPEC = ContainerSpec(image="/images/llem-pytorch.sif", command=["sleep", "infinity"], key="0123456789abcdef",
                     mounts=["/data/sweep", "/home/u/.cache/huggingface"], env={"HF_HOME": "/home/u/.cache/hf"},
                     env_names=["HF_TOKEN"], user="1000:1000")
GPU = ContainerSpec(**{**SPEC.__dict__, "gpus": ["GPU-aaaa", "GPU-bbbb"]})


def test_the_persistent_container_is_an_instance_with_the_recorded_line():
    assert Apptainer().run_argv(SPEC, "llem-0123456789ab-42", detach=True) == [
        "apptainer", "instance", "start", "--contain", "--cleanenv",
        "--bind", "/data/sweep:/data/sweep", "--bind", "/home/u/.cache/huggingface:/home/u/.cache/huggingface",
        "--env", "HF_HOME=/home/u/.cache/hf", "/images/llem-pytorch.sif", "llem-0123456789ab-42"]


def test_a_server_is_a_foreground_exec_of_its_command():
    spec = ContainerSpec(**{**SPEC.__dict__, "command": ["vllm", "serve", "m", "--port", "8001"]})
    argv = Apptainer().run_argv(spec, "llem-x-1", detach=False)
    assert argv[:2] == ["apptainer", "exec"] and argv[-6:] == ["/images/llem-pytorch.sif", "vllm", "serve", "m",
                                                              "--port", "8001"]


def test_the_measurement_runs_by_exec_in_the_instance():
    argv = Apptainer().exec_argv("llem-x-1", ["python", "-m", "llem.deploy.inside", "/j/.llem-job.pkl"],
                                 env_names=["HF_TOKEN"], user="1000:1000")
    assert argv == ["apptainer", "exec", "--cleanenv", "instance://llem-x-1", "python", "-m", "llem.deploy.inside",
                    "/j/.llem-job.pkl"]


def test_gpus_are_nv_and_the_jobs_uuids():
    argv = Apptainer().run_argv(GPU, "n", detach=True)
    assert "--nv" in argv and "CUDA_VISIBLE_DEVICES=GPU-aaaa,GPU-bbbb" in argv


def test_no_nv_on_the_cpu():
    assert not any("--nv" == a or "CUDA_VISIBLE_DEVICES" in a for a in Apptainer().run_argv(SPEC, "n", detach=True))


def test_secrets_go_as_apptainerenv_in_the_clients_environment_never_on_its_command_line(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_s3cretValue")
    runtime = Apptainer()
    lines = [runtime.run_argv(SPEC, "n", detach=True), runtime.exec_argv("n", ["true"], env_names=["HF_TOKEN"])]
    assert not any("s3cret" in a or "HF_TOKEN" in a for argv in lines for a in argv)
    assert runtime.child_env(["HF_TOKEN"])["APPTAINERENV_HF_TOKEN"] == "hf_s3cretValue"


def test_stopping_an_instance_is_instance_stop():
    assert Apptainer().rm_argv("llem-x-1") == ["apptainer", "instance", "stop", "llem-x-1"]


def test_runtime_apptainer_selects_the_apptainer_client(compose_cfg):
    config = to_config(compose_cfg(["runtime=apptainer", "runtime.image=/images/x.sif"]))
    assert isinstance(for_config(config.runtime), Apptainer)


def test_the_engines_image_becomes_a_docker_reference(compose_cfg):
    from llem.config.runtime import image_for

    config = to_config(compose_cfg(["runtime=apptainer"]))
    assert image_for(config.runtime, config.backend, "none").startswith("docker://llem-pytorch:")


def test_an_image_that_is_neither_sif_nor_a_reference_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="runtime.image"):
        to_config(compose_cfg(["runtime=apptainer", "runtime.image=llem-pytorch:1"]))


def test_the_hash_names_the_sif(compose_cfg):
    a = to_config(compose_cfg(["runtime=apptainer", "runtime.image=/images/a.sif"]))
    b = to_config(compose_cfg(["runtime=apptainer", "runtime.image=/images/b.sif"]))
    assert config_hash(a) != config_hash(b)


def test_the_check_names_a_missing_binary_within_2_s(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match="`apptainer` is not on PATH"):
        Apptainer().check("/images/x.sif", "runtime.image", pull=False)
    assert time.monotonic() - t0 < 2


@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    """An ``apptainer`` on PATH that answers nothing (the check must not need it to)."""
    path = tmp_path / "bin" / "apptainer"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{path.parent}:{os.environ['PATH']}")


def test_the_check_names_a_missing_sif_and_how_to_make_it(fake_binary):
    with pytest.raises(RuntimeUnavailable, match=r"runtime.image='/nope/x.sif' is not a file on this node: build"):
        Apptainer().check("/nope/x.sif", "runtime.image", pull=False)


def test_a_registry_reference_needs_pull(fake_binary):
    with pytest.raises(RuntimeUnavailable, match="runtime.pull=false: `apptainer pull"):
        Apptainer().check("docker://vllm/vllm-openai:v0.24.0", "backend.server_image", pull=False)
    assert Apptainer().check("docker://vllm/vllm-openai:v0.24.0", "backend.server_image", pull=True) is None


def test_a_present_sif_passes_the_check_and_its_digest_is_its_content(fake_binary, tmp_path):
    sif = tmp_path / "x.sif"
    sif.write_bytes(b"not really an image")
    assert Apptainer().check(str(sif), "runtime.image", pull=False).labels == {}
    import hashlib

    assert Apptainer().inspect_image(str(sif)).digest == "sha256:" + hashlib.sha256(sif.read_bytes()).hexdigest()


@pytest.mark.skipif(shutil.which("apptainer") is None, reason="apptainer is not on PATH (not packaged for this OS)")
def test_a_real_instance_runs_a_command_and_stops(tmp_path):
    image = os.environ.get("LLEM_TEST_SIF") or "docker://busybox:1.36"
    runtime = Apptainer()
    spec = ContainerSpec(image=image, command=[], key="feedfacefeed", mounts=[str(tmp_path)])
    name = f"llem-feedfacefeed-{os.getpid()}"
    subprocess.run(runtime.run_argv(spec, name, detach=True), check=True, timeout=600)
    try:
        assert runtime.running(name)
        assert runtime.exec_output(name, ["ls", str(tmp_path)]) is not None
    finally:
        runtime.rm(name)
    assert not runtime.running(name)


def test_pulling_a_sif_runs_nothing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    Apptainer().pull("/images/x.sif", 10.0)  # no apptainer needed: nothing to pull
