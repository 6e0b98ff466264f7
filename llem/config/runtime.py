"""The runtime part of the schema (``runtime``): where a job's engine lives — on the host, inside a container
image run by docker, podman or apptainer, or ``auto`` (resolved per job by :mod:`llem.deploy.auto`). Re-exported by
:mod:`llem.config`; each key is defined once, here.

The image itself is the engine's (``backend.image`` for llem's image of that engine, used in-process;
``backend.server_image`` for the engine's own server image, used with ``server=launch``); ``runtime.image``
overrides either for one job or sweep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

from llem.support.errors import require as _require

RUNTIMES = ("host", "docker", "podman", "apptainer", "auto")
CONTAINER_RUNTIMES = ("docker", "podman", "apptainer")
APPTAINER_IMAGES = ("docker://", "oras://", "library://", "shub://")  # remote references Apptainer pulls
# An image reference: [registry[:port]/]name[/more][:tag][@sha256:digest], or a bare image id (sha256:...).
IMAGE_REF = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                       r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                       r"(?:@sha256:[0-9a-f]{64})?|sha256:[0-9a-f]{64}")
# Run arguments llem sets itself: runtime.args may add to them (more mounts, settings), never replace them (the
# container's network, user, GPUs, name and labels are what make the measurement the one the row describes).
OWN_RUN_ARGS = ("--network", "--net", "--user", "-u", "--gpus", "--device", "--name", "--rm", "--init", "--label",
                "-l", "-d", "--detach")


def is_image_ref(text: object) -> bool:
    return isinstance(text, str) and IMAGE_REF.fullmatch(text) is not None


def is_apptainer_image(text: object) -> bool:
    """A ``.sif`` path, or a remote reference Apptainer pulls (``docker://name:tag``, ``oras://…``)."""
    return isinstance(text, str) and (text.endswith(".sif") or text.startswith(APPTAINER_IMAGES))


@dataclass
class RuntimeConfig:
    """Where the job's engine runs: ``host`` (llem's own processes, the default) or a container (docker,
    podman) of the engine's image — the measurement process inside it without a server, the engine's own
    server inside it with ``server=launch``. The client, the energy meter and the idle floors stay on the host."""

    name: str = "host"  # host | docker | podman | apptainer | auto (the host where the engine imports, else its image)
    image: Optional[str] = None  # null: the engine's backend.image (in-process) or backend.server_image (launch)
    pull: bool = False  # false: an image not present locally fails at the check (true: pulled, as load)
    reuse: bool = True  # consecutive jobs of a sweep needing the same container share it
    args: List[str] = field(default_factory=list)  # extra arguments for the runtime's run command
    global_args: List[str] = field(default_factory=list)  # before every subcommand (podman: --runtime runc …)

    def __post_init__(self) -> None:
        _require(self.name in RUNTIMES, "runtime.name", self.name, ", ".join(RUNTIMES) + " (runtime=<name>)")
        if self.image is not None and self.name == "apptainer":
            _require(is_apptainer_image(self.image), "runtime.image", self.image,
                     "null (the engine's image, as docker://<image>) or, with runtime=apptainer, a .sif path or a "
                     "docker:// (oras://, library://) reference")
        elif self.image is not None:
            _require(is_image_ref(self.image), "runtime.image", self.image,
                     "null (the engine's image) or an image reference such as name:tag or registry/name@sha256:…")
        for arg in self.args:
            _require(isinstance(arg, str), "runtime.args", list(self.args), "a list of strings")
            flag = arg.split("=", 1)[0]
            _require(flag not in OWN_RUN_ARGS, "runtime.args", list(self.args),
                     f"run arguments other than the ones llem sets itself ({', '.join(OWN_RUN_ARGS)})")

        for arg in self.global_args:
            _require(isinstance(arg, str), "runtime.global_args", list(self.global_args), "a list of strings")

    @property
    def in_container(self) -> bool:
        return self.name in CONTAINER_RUNTIMES


def image_for(runtime: RuntimeConfig, backend: object, server_mode: str) -> Optional[str]:
    """The image a job runs in: runtime.image, else the engine's server image (server=launch) or its llem
    image; None on the host."""
    if not runtime.in_container:
        return None
    image = runtime.image or getattr(backend, "server_image" if server_mode == "launch" else "image", None)
    if runtime.name == "apptainer" and image and not is_apptainer_image(image):
        return f"docker://{image}"  # the engine's image, as Apptainer names a registry's (needs runtime.pull)
    return image


def image_key(runtime: RuntimeConfig, server_mode: str) -> str:
    """The key naming the image a job needs, for its error messages: runtime.image when set, else the engine's."""
    if runtime.image:
        return "runtime.image"
    return "backend.server_image" if server_mode == "launch" else "backend.image"
