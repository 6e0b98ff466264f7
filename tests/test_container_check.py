"""Which deployment a container runtime gets, and the check's rule for llem's own images: the image that
runs llem's measurement must carry this llem (its llem.version label), or the job fails at the check naming
the key and the command that rebuilds it; the engine's own server image needs no llem."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem import __version__
from llem.config import config_hash, to_config
from llem.deploy.base import JobPlace
from llem.deploy.container import check_image
from llem.runtime import ContainerRuntime, ImageFacts, RuntimeUnavailable


def _place(compose_cfg, overrides):
    config = to_config(compose_cfg(["runtime=docker", *overrides]))
    return JobPlace(config, config_hash(config), Path("job"), "cpu", 0)


@pytest.fixture
def labels(monkeypatch):
    """labels(dict): the runtime's check finds the image present with these labels."""
    def _set(found):
        monkeypatch.setattr(ContainerRuntime, "check", lambda self, image, key, pull: ImageFacts(
            ref=image, id="sha256:" + "a" * 64, labels=found))
    return _set


def test_an_image_of_another_llem_fails_naming_the_key_and_the_build(compose_cfg, labels):
    labels({"llem.version": "0.0.1"})
    with pytest.raises(RuntimeUnavailable) as err:
        check_image(_place(compose_cfg, []), need_llem=True)
    message = str(err.value)
    assert message.startswith(f"backend.image='llem-pytorch:{__version__}' holds llem 0.0.1")
    assert "docker compose -f docker/compose.yaml build pytorch" in message


def test_an_image_without_llem_s_label_is_not_one_of_llem_s(compose_cfg, labels):
    labels({})
    with pytest.raises(RuntimeUnavailable, match="runtime.image='other:1' has no llem.version label"):
        check_image(_place(compose_cfg, ["runtime.image=other:1"]), need_llem=True)


def test_the_engine_s_own_server_image_needs_no_llem(compose_cfg, labels):
    labels({})
    assert check_image(_place(compose_cfg, ["server=launch"]), need_llem=False).labels == {}


def test_an_image_of_this_llem_passes(compose_cfg, labels):
    labels({"llem.version": __version__})
    assert check_image(_place(compose_cfg, []), need_llem=True).labels["llem.version"] == __version__


def test_a_container_runtime_picks_the_container_deployments(compose_cfg):
    from llem.deploy.choose import pick
    from llem.deploy.container import InContainer
    from llem.deploy.container_server import ContainerServer
    from llem.deploy.held import Held

    assert type(pick(_place(compose_cfg, []), Held())) is InContainer
    assert type(pick(_place(compose_cfg, ["server=launch"]), Held())) is ContainerServer
