"""Which container deployment a job with a container runtime gets (``runtime=docker|podman``): the engine's
own server in its server image (``server=launch``), else the measurement process in llem's image."""

from __future__ import annotations

from llem.deploy.base import Deployment, JobPlace
from llem.deploy.held import Held


def pick_container(place: JobPlace, held: Held) -> Deployment:
    from llem.deploy.container import InContainer
    from llem.deploy.container_server import ContainerServer

    return (ContainerServer if place.config.server.mode == "launch" else InContainer)(place, held)
