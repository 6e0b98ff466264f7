"""The engine in llem's own processes: in this one (``isolate=false``) or in a measurement process spawned
for the job (``isolate=true``, the default); and how any deployment measures, here or in such a process.

A spawned process starts before the device-idle floor, so that it imports its engine (seconds: ~10 s for
vLLM) while the floor is metered; the import touches no device. A process that died leaves a failed row
naming how and in which stage.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from llem import model_source, results
from llem.backends import engine_class
from llem.deploy.base import Deployment, JobPlace
from llem.deploy.held import Held
from llem.deploy.process import Started, abandon, measure_isolated, start_isolated
from llem.energy.idle import DeviceIdle
from llem.outcome import record_failure
from llem.results.row import Stage


class Local(Deployment):
    """The job measured in this process: nothing outlives it, so any resident of the driver is stopped."""

    def check_needs(self) -> None:
        """The engine's packages (the user's fix first), then where the model's weights come from."""
        p = self.place
        engine_class(p.config.backend.name)(p.config, p.device).check()
        model_source.check(p.config.model)

    def start(self) -> DeviceIdle:
        self.held.release()  # a kept engine or a server would share the GPUs
        self.started_cold = True  # its engine is built in this process, for this job
        return self.device_idle()

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        return measure_here(self.place, self.held, idle)


class Spawned(Local):
    """The job measured in a measurement process of its own, spawned before the floor."""

    def __init__(self, place: JobPlace, held: Held) -> None:
        super().__init__(place, held)
        self.started: Optional[Started] = None

    def start(self) -> DeviceIdle:
        self.held.release()
        self.started = start_isolated(self.place.config, self.place.device, True, self.held)
        self.started_cold = True  # a fresh process builds its engine for this job
        try:
            return self.device_idle()
        except BaseException:
            abandon(self.started, self.held)
            raise

    def measure(self, idle: DeviceIdle) -> Dict[str, Any]:
        return measure_here(self.place, self.held, idle, started=self.started)


def measure_here(place: JobPlace, held: Held, idle: DeviceIdle, endpoint: Any = None,
                 started: Optional[Started] = None) -> Dict[str, Any]:
    """The job measured where ``isolate`` says: in this process, or in a spawned one (``started`` ahead, or
    now); ``endpoint`` is the server it measures over HTTP, if any."""
    if not place.config.isolate:
        from llem.experiment import Experiment

        return Experiment(place.config, place.job_dir, place.device, idle, endpoint=endpoint).run().to_dict()
    return row_after(place, measure_isolated(place.config, place.job_dir, place.device, idle, held, endpoint,
                                             started))


def row_after(place: JobPlace, died: Optional[Tuple[str, Stage]]) -> Dict[str, Any]:
    """The row a measurement process left; a failed row when it died before writing an ok one, or wrote none."""
    values = results.read_result(place.job_dir)
    if died is not None and (values is None or values.get("status") != "ok"):
        error, stage = died
        return record_failure(place.job_dir, error, "ProcessDied", stage, config=place.config, chash=place.chash)
    if values is None:
        return record_failure(place.job_dir, "the measurement process wrote no result", "NoResult", Stage.write,
                              config=place.config, chash=place.chash)
    return values
