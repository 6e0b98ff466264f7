"""Result parts about how a job was prepared for its window: the request count it was sized to, the engine's
start-up and warm-up, what its build reused from the compile caches, whether it ran on a kept engine, and the
container it ran in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llem.results.schema import col


@dataclass
class Sizing:
    """How the request count was decided (dataset.num_requests, or sized to the engine and the window)."""

    requests_sizing: Optional[str] = col("auto (measure.waves × capacity, more for measure.min_window_s), set "
                                         "(dataset.num_requests) or trace (load.trace's lines, docs/traces.md)")
    num_in_flight: Optional[int] = col("sequences the engine holds at once (batch × replicas), as sizing counted "
                                       "them: for a server of unknown concurrency, load.max_concurrency, else the "
                                       "in-process default; for a burst against one, num_in_service_peak")
    num_in_flight_engine: Optional[int] = col("sequences one engine runs at once as it ran: batch, or a launched "
                                              "server's own default where llem knows it")
    num_in_flight_engine_null_reason: Optional[str] = col("why num_in_flight_engine is null, when it is")
    num_in_service_peak: Optional[int] = col("the most requests in service at once in the measured window (first "
                                             "token to end, from the requests' timings)")
    num_in_service_peak_null_reason: Optional[str] = col("why num_in_service_peak is null, when it is")
    num_waves: Optional[float] = col("num_requests ÷ num_in_flight")
    window_min_s: Optional[float] = col("the window asked for (measure.min_window_s; null on the CPU)")
    window_estimate_s: Optional[float] = col("the window predicted for the count measured (s)")
    measure_passes_run: Optional[int] = col("measured passes: 2 or 3 when earlier windows came out short (discarded)")


@dataclass
class OutsideWindow:
    """Engine start-up and warm-up, outside the measured window."""

    engine_import_s: Optional[float] = col("importing the engine's libraries, before load and touching no device; "
                                           "run beside the parent's device-idle floor when one is metered (s)")
    load_s: Optional[float] = col("engine start-up after its import: device context, weights, compilation (s)")
    load_energy_j: Optional[float] = col("GPU energy of the load phase (J)")
    warmup_s: Optional[float] = col("warm-up duration, excluded from every metric (s)")
    warmup_energy_j: Optional[float] = col("GPU energy of the warm-up (J)")
    warmup_batches_run: Optional[int] = col("warm-up batches run")
    warmup_latency_cv: Optional[float] = col("coefficient of variation of the last warm-up batch latencies")


@dataclass
class BuildCache:
    """What the engine's build reused from the compile caches under cache_dir (never in a window)."""

    compile_cache: Optional[str] = col("hit: the build loaded compiled artifacts and compiled nothing; miss: it "
                                       "compiled (and saved) now; none: this engine and config compile nothing")
    compile_cache_dir: Optional[str] = col("llem's cache root (cache_dir) the engine's caches were pointed at")
    num_compile_files_written: Optional[int] = col("compiled artifacts the build wrote (new or changed files)")


@dataclass
class EngineReuse:
    """The loaded engine a job measured on: built by this job, or kept loaded from an earlier job of the sweep
    whose build was the same (reuse_engine; the rule in docs/sweeps.md)."""

    engine_reused: Optional[bool] = col("the engine was built by an earlier job of the sweep and kept loaded: this "
                                        "job paid no load (load_s null)")
    engine_build_s: Optional[float] = col("how long the build this job measured on took, paid by the job that "
                                          "built it; never in a window (s)")
    engine_build_job: Optional[str] = col("the job dir (name) that built the engine this job measured on")
    num_engine_jobs: Optional[int] = col("jobs this engine build has measured, this one included")
    num_engine_builds: Optional[int] = col("engine builds in this sweep so far, this job's included")


HOST_RUNTIME = "runtime=host: the engine ran in llem's own processes on this host"


@dataclass
class ContainerFacts:
    """Where the engine ran: the host, or a container of an image (runtime=docker|podman|apptainer; runtime.reuse)."""

    runtime: Optional[str] = col("where the engine ran: host, docker, podman or apptainer")
    runtime_image: Optional[str] = col("the image reference the engine ran in")
    runtime_image_digest: Optional[str] = col("the image's content digest: the registry's (name@sha256:…) when it "
                                              "came from one, else the local image id (sha256:…)")
    container_start_s: Optional[float] = col("how long pulling (runtime.pull) and starting the container took until "
                                             "it ran, paid by the job that started it; never in a window (s)")
    container_reused: Optional[bool] = col("the container was started by an earlier job of the sweep and kept "
                                           "running: this job paid no container start")
    engine_version_inside: Optional[str] = col("the engine's package and version as reported inside the container "
                                               "(name==version)")
    container_null_reason: Optional[str] = col("why the container columns are null (the host runtime), or what of "
                                               "them could not be read")


def on_host() -> ContainerFacts:
    return ContainerFacts(runtime="host", container_null_reason=HOST_RUNTIME)


@dataclass
class SweepPlace:
    """Where the job stood in its sweep and what it started from (sweep.order, cold_start; docs/sweeps.md)."""

    sweep_position: Optional[int] = col("1-based position of the job in the sweep's run order (sweep.order)")
    sweep_position_null_reason: Optional[str] = col("why sweep_position is null, when it is (a single run)")
    sweep_order: Optional[str] = col("the sweep's run order: grid, interleaved, grouped or shuffled (null: a single "
                                     "run)")
    started_cold: Optional[bool] = col("true: nothing an earlier job left served this one (its engine was built, its "
                                       "server or container started for it); false: it measured on a kept engine or "
                                       "a running server or container; null behind an external server (not llem's "
                                       "to start) or when the job ended before it started")
