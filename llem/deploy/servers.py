"""The engine behind an OpenAI-compatible server, measured over HTTP by llem's client (llem.serving.client):
one llem launches (``server=launch``; its process is llem.deploy.server_process) or one already running
(``server=external``). The client runs where ``isolate`` says (llem.deploy.local.measure_here).

Launched: the device-idle floor is taken after any resident is stopped and before the server starts, with no
CUDA context on the GPUs; a reused server holds the GPUs, so its jobs take the floor the sweep metered before
it started. A server that does not come up is a failed row (stage ``load``) with its last log lines.

External: the server holds the model; the check asks that it answers ``/v1/models`` now.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from llem.backends import engine_class
from llem.config import model_source
from llem.deploy import floors
from llem.deploy.base import Deployment, StartFailed
from llem.deploy.local import measure_here
from llem.deploy.server_process import copy_log, launch, log_size
from llem.energy.idle import DeviceIdle
from llem.results.row import Stage
from llem.serving.server import Endpoint, auth_headers, check_external
from llem.support.errors import EngineUnavailable, ServerError

log = logging.getLogger(__name__)

SERVER_LOGS = ".llem-servers"  # in a sweep dir: the log of each server its jobs started


class Served(Deployment):
    """A job measured over HTTP from this process against a server llem started (on this host or in a
    container): its log lines written while the job ran go into the job's server.log."""

    endpoint: Optional[Endpoint] = None
    log_from = 0  # where this job's lines begin in the server's log

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        return measure_here(self.place, self.held, idle, endpoint=self.endpoint)

    def finish(self) -> None:
        """The server's lines written while the job ran into its server.log; a single run stops the server."""
        if self.endpoint is not None:
            copy_log(self.endpoint, self.log_from, self.place.job_dir)
        super().finish()


class Launched(Served):
    """The engine's own server, started by llem (or the running one of an earlier job with the same key)."""

    def serving(self) -> Any:
        p = self.place
        return engine_class(p.config.backend.name).serving(p.config, p.device)

    def check_needs(self) -> None:
        self.serving().check()  # the server's packages (the user's fix first), then the weights
        model_source.check(self.place.config.model)

    def start(self) -> DeviceIdle:
        p, sweep = self.place, self.place.sweep_dir
        idle = DeviceIdle()

        def take_idle() -> None:  # the resident is stopped and the server not started yet
            nonlocal idle
            idle = self.device_idle()

        try:
            self.endpoint = launch(self.serving(), p.config, sweep / SERVER_LOGS if sweep else p.job_dir, p.gpus(),
                                   self.held, before_start=take_idle, log_name=None if sweep else "server.log")
        except (ServerError, EngineUnavailable, OSError, RuntimeError) as exc:
            log.error("the server did not start: %s", exc)
            raise StartFailed(f"{type(exc).__name__}: {exc}", type(exc).__name__, Stage.load) from exc
        self.log_from = 0 if self.endpoint.start_s is not None else log_size(self.endpoint)
        self.started_cold = not self.endpoint.reused
        if self.endpoint.reused and p.device == "cuda":
            idle = floors.for_server(p.gpus_needed, sweep)
        return idle


class External(Deployment):
    """A server someone else runs at ``server.url``: llem neither starts nor stops it."""

    endpoint: Optional[Endpoint] = None

    def check_needs(self) -> None:
        check_external(self.place.config.server.url, auth_headers(self.place.config.server))

    def start(self) -> DeviceIdle:
        self.held.release()  # a kept engine or a launched server would share the GPUs
        idle = self.device_idle()
        s = self.place.config.server
        models = check_external(s.url, auth_headers(s))
        self.endpoint = Endpoint(url=s.url.rstrip("/"), mode="external", prompt=s.prompt,
                                 model_name=s.model_name or (models[0] if models else None),
                                 max_in_flight_null_reason="an external server runs at its own setting, unknown "
                                 "to llem")
        return idle

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        return measure_here(self.place, self.held, idle, endpoint=self.endpoint)
