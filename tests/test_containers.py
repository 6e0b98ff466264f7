"""The container test fixture: llem's CPU test image runs as the host's user, with the checkout mounted at its
own path and the host's network, and it is found, skipped or failed as CI and developers need."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import llem
from tests import containers
from tests.containers import ROOT, require_image


def test_the_checkout_imports_in_the_image_as_the_host_user(container_image, tmp_path):
    """import llem inside, from the checkout mounted at its own path; a file written into a mounted folder is
    the host user's."""
    code = ("import llem, os, pathlib, sys; print(llem.__file__); "
            "pathlib.Path(sys.argv[1], 'written').write_text(str(os.getuid()))")
    proc = container_image.run(["python", "-c", code, str(tmp_path)], mounts=[ROOT, tmp_path], workdir=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "llem" / "__init__.py")
    written = tmp_path / "written"
    assert written.read_text() == str(os.getuid()) and written.stat().st_uid == os.getuid()


def test_the_images_own_llem_is_the_checkouts(container_image):
    """Outside the checkout the image's installed llem answers, at the checkout's version, with its engine."""
    proc = container_image.run(["python", "-c", "import llem, transformers, torch; "
                                "print(llem.__version__, llem.__file__.startswith('/opt/llem/'), torch.__version__)"])
    assert proc.returncode == 0, proc.stderr
    version, installed, torch = proc.stdout.split()
    assert version == llem.__version__ and installed == "True" and torch.endswith("+cpu")


def test_the_host_network_is_the_containers(container_image):
    """--network=host: the container sees the host's hostname and loopback, so a server inside answers on the
    host's port."""
    proc = container_image.run(["python", "-c", "import socket; print(socket.gethostname())"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def no_runtime(monkeypatch, tmp_path):
    """A PATH without docker or podman, and nothing remembered from an earlier lookup."""
    monkeypatch.setenv("PATH", str(tmp_path))
    containers._found.cache_clear()
    yield
    containers._found.cache_clear()


def test_a_missing_runtime_skips_naming_it(no_runtime, monkeypatch):
    monkeypatch.delenv(containers.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="docker: no docker command on PATH"):
        require_image("docker")


def test_a_missing_runtime_fails_where_containers_are_required(no_runtime, monkeypatch):
    monkeypatch.setenv(containers.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="podman: no podman command on PATH.*LLEM_REQUIRE_CONTAINERS=1"):
        require_image("podman")


def test_a_missing_image_names_the_build_command(monkeypatch, tmp_path):
    """A daemon that answers without the image: the reason names the image and the command that builds it."""
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n[ \"$1\" = version ] && { echo 20.10; exit 0; }\necho 'No such image' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    image, why = containers.find_image("docker")
    assert image is None and f"no image {containers.IMAGE}" in why and why.endswith("build it: docker/test/build.sh")


def test_an_image_of_other_sources_is_not_current(monkeypatch, tmp_path):
    """The image's llem.source differs from the checkout's: stale, rebuild (its code is not the code under test)."""
    fake = tmp_path / "docker"
    labels = json.dumps({"llem.version": llem.__version__, "llem.source": "0000"})
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = version ] && {{ echo 20.10; exit 0; }}\necho 'sha256:ab {labels}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    image, why = containers.find_image("docker")
    assert image is None and "other llem sources" in why and why.endswith("rebuild it: docker/test/build.sh")


@pytest.mark.slow
def test_a_job_runs_in_the_image_as_the_host_user(container_image, tmp_path):
    """python -m llem on CPU inside the image, as the host's user, writing into a folder mounted from the host:
    the row is ok and the files are the host user's."""
    from tests.conftest import FAST

    job = tmp_path / "run"
    proc = container_image.run(["python", "-m", "llem", *FAST, f"hydra.run.dir={job}", f"cache_dir={tmp_path}/cache"],
                               mounts=[tmp_path], workdir=tmp_path, timeout_s=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import pandas as pd

    row = pd.read_parquet(job / "results.parquet").iloc[0]
    assert row["status"] == "ok" and row["output_tokens_total"] > 0
    assert (job / "results.parquet").stat().st_uid == os.getuid()


def test_transformers_serve_is_in_the_image(container_image):
    """The image carries the server the pytorch engine launches (transformers serve, with fastapi and uvicorn)."""
    proc = container_image.run(["python", "-m", "transformers.cli.transformers", "serve", "--help"])
    assert proc.returncode == 0 and "--continuous-batching" in proc.stdout, proc.stderr[-2000:]
