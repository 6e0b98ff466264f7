"""The container runtimes' command lines, one behaviour each: the host's network, an init, removal at
stop, mounts at the same path, secrets by name only, exactly the job's GPUs, labels that say whose a
container is, podman's global flags first; and the check's words when the runtime is missing."""

from __future__ import annotations

import json
import os
import time

import pytest

from llem.runtime import ContainerRuntime, ContainerSpec, RuntimeUnavailable, container_name
from llem.runtime.containers import _facts, build_hint

SPEC = ContainerSpec(image="llem-pytorch:0.1.0", command=["sleep", "infinity"], key="0123456789abcdef",
                     mounts=["/data/sweep", "/home/u/.cache/huggingface"], user="1000:1000")


def _run(spec=SPEC, runtime=None, detach=True):
    return (runtime or ContainerRuntime("docker")).run_argv(spec, "llem-x", detach=detach)


def _after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_a_container_runs_on_the_host_network_with_an_init_and_is_removed_when_it_stops():
    argv = _run()
    assert argv[:2] == ["docker", "run"] and {"--network=host", "--init", "--rm"} <= set(argv)


def test_mounts_are_at_the_same_path_inside():
    assert _after(_run(), "--volume") == ["/data/sweep:/data/sweep",
                                          "/home/u/.cache/huggingface:/home/u/.cache/huggingface"]


def test_the_measurement_runs_as_the_given_user():
    assert _after(_run(), "--user") == ["1000:1000"]


def test_secrets_go_by_name_and_their_values_never_reach_the_command_line(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_s3cretValue")
    argv = _run(ContainerSpec(**{**SPEC.__dict__, "env_names": ["HF_TOKEN"]}))
    assert "HF_TOKEN" in _after(argv, "--env") and not any("s3cret" in a for a in argv)


def test_plain_settings_go_as_name_equals_value():
    argv = _run(ContainerSpec(**{**SPEC.__dict__, "env": {"HF_HOME": "/home/u/.cache/huggingface"}}))
    assert "HF_HOME=/home/u/.cache/huggingface" in _after(argv, "--env")


def test_labels_name_the_driver_its_host_and_the_key():
    labels = _after(_run(), "--label")
    assert f"llem.driver={os.getpid()}" in labels and "llem.key=0123456789abcdef" in labels
    assert any(label.startswith("llem.host=") for label in labels)


def test_a_persistent_container_is_detached_and_a_server_is_not():
    assert "--detach" in _run(detach=True) and "--detach" not in _run(detach=False)


def test_the_image_comes_after_runtime_args_and_before_the_command():
    argv = _run(ContainerSpec(**{**SPEC.__dict__, "extra": ["--shm-size=1g"]}))
    at = argv.index("llem-pytorch:0.1.0")
    assert argv[at - 1] == "--shm-size=1g" and argv[at + 1:] == ["sleep", "infinity"]


def test_docker_gets_exactly_the_job_s_gpus_by_uuid():
    argv = _run(ContainerSpec(**{**SPEC.__dict__, "gpus": ["GPU-a", "GPU-b"]}))
    assert _after(argv, "--gpus") == ['"device=GPU-a,GPU-b"']


def test_podman_gets_the_job_s_gpus_as_cdi_devices():
    argv = _run(ContainerSpec(**{**SPEC.__dict__, "gpus": ["GPU-a", "GPU-b"]}), ContainerRuntime("podman"))
    assert _after(argv, "--device") == ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=GPU-b"] and "--gpus" not in argv


def test_a_cpu_job_gets_no_gpu():
    argv = _run()
    assert "--gpus" not in argv and "--device" not in argv


def test_podman_s_global_flags_come_before_every_subcommand():
    podman = ContainerRuntime("podman", ["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
    head = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    assert _run(runtime=podman)[:6] == [*head, "run"]
    assert podman.exec_argv("c", ["true"])[:6] == [*head, "exec"]
    assert podman.rm_argv("c")[:6] == [*head, "rm"]


def test_exec_runs_as_the_user_with_secrets_by_name():
    argv = ContainerRuntime("docker").exec_argv("llem-x", ["python", "-m", "llem.deploy.inside", "/j/job.pkl"],
                                                env_names=["HF_TOKEN"], user="1000:1000")
    assert argv == ["docker", "exec", "--user", "1000:1000", "--env", "HF_TOKEN", "llem-x", "python", "-m",
                    "llem.deploy.inside", "/j/job.pkl"]


def test_stopping_is_a_forced_remove():
    assert ContainerRuntime("docker").rm_argv("llem-x") == ["docker", "rm", "--force", "llem-x"]


def test_a_container_s_name_says_what_it_holds_and_whose_it_is():
    assert container_name("0123456789abcdef0000") == f"llem-0123456789ab-{os.getpid()}"


def test_a_runtime_not_on_path_fails_the_check_at_once_naming_the_key(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as err:
        ContainerRuntime("docker").check("llem-pytorch:0.1.0", "backend.image", pull=False)
    assert time.monotonic() - t0 < 2 and "runtime.name=docker" in str(err.value) and "install" in str(err.value)


def test_the_digest_is_the_registry_s_when_there_is_one_else_the_image_id():
    pulled = json.dumps([{"Id": "sha256:aa", "RepoDigests": ["vllm/vllm-openai@sha256:bb"], "Config": {}}])
    built = json.dumps([{"Id": "sha256:aa", "RepoDigests": [], "Config": {"Labels": {"llem.version": "0.1.0"}}}])
    assert _facts("x", pulled).digest == "vllm/vllm-openai@sha256:bb"
    assert _facts("x", built).digest == "sha256:aa" and _facts("x", built).labels == {"llem.version": "0.1.0"}


def test_a_missing_llem_image_names_the_command_that_builds_it():
    assert build_hint("llem-vllm:0.1.0") == "docker compose -f docker/compose.yaml build vllm"


def test_an_image_llem_does_not_build_gets_no_build_hint():
    assert build_hint("vllm/vllm-openai:v0.24.0") is None


def test_labels_are_read_with_each_runtime_s_template():
    assert ContainerRuntime("docker")._label_template("llem.driver") == '{{.Label "llem.driver"}}'
    assert ContainerRuntime("podman")._label_template("llem.driver") == '{{index .Labels "llem.driver"}}'
