"""Container runtimes (``runtime=docker|podman|apptainer``): one small class over their command-line clients
(:mod:`llem.runtime.containers`)."""

from __future__ import annotations

from llem.runtime.containers import (
    ContainerRuntime,
    ContainerSpec,
    ImageFacts,
    RuntimeUnavailable,
    container_name,
)

__all__ = ["ContainerRuntime", "ContainerSpec", "ImageFacts", "RuntimeUnavailable", "container_name", "for_config"]


def for_config(runtime) -> ContainerRuntime:
    """The runtime a ``RuntimeConfig`` names (a container runtime)."""
    if runtime.name == "apptainer":
        from llem.runtime.apptainer import Apptainer

        return Apptainer(list(runtime.global_args))
    return ContainerRuntime(runtime.name, list(runtime.global_args))
