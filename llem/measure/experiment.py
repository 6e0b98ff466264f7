"""The measurement protocol, the same for every engine:

workload → check → load (timed, metered) → warmup (excluded) → loaded-idle baseline →
measured window (device synchronised and counters read at both edges) → write.

The device-idle baseline is measured before this, by the job's parent, which never opens a
CUDA context (see :func:`device_idle_baseline`). Any exception becomes a failed result row
with the stage it happened in; the files are written either way, results.parquet last.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from llem import results, workload
from llem.backends import engine_class
from llem.backends.base import EngineInfo
from llem.config import BaselineKind, Config, config_hash
from llem.energy import flags as doubt
from llem.energy import host_cpu, phases
from llem.energy.codecarbon import HostWindows
from llem.energy.idle import DeviceIdle, other_processes
from llem.energy.nvml import GpuReader, open_gpus
from llem.energy.window import EnergyMeter, Sampler, WindowEnergy
from llem.measure import compile_cache, load_metrics, metrics, request_energy, server_metrics, sizing
from llem.measure.kept_engine import KeptEngine
from llem.measure.preload import preload_engine
from llem.measure.warmup import Warmup, at_once, warm_up
from llem.measure.window_parts import timeseries, window_parts
from llem.results import environment
from llem.results.attribution import EnergyAttribution
from llem.results.load import LoadMetrics, OutputLengths, ServerFacts, ServerMetrics
from llem.results.preparation import ContainerFacts, on_host
from llem.results.row import (
    Baselines,
    BuildCache,
    CodecarbonFacts,
    EnergySummary,
    EngineReuse,
    HostEnergy,
    Notes,
    Outcome,
    OutsideWindow,
    PrefillDecode,
    ResultRow,
    Sizing,
    Stage,
    SteadyState,
    WorkloadCounts,
    assemble,
)
from llem.results.tables import RequestRow, TimeseriesRow
from llem.support.console import ProgressBar
from llem.workload import arrivals
from llem.workload.records import RequestResult

log = logging.getLogger(__name__)

def metered_gpus(cfg: Config, engine_cls, device: str) -> Tuple[List[GpuReader], List[str], Optional[str]]:
    """NVML readers for the GPUs the job's engine uses (by UUID from CUDA_VISIBLE_DEVICES), warnings,
    and why there are none, if so."""
    if device != "cuda":
        return [], [], "device=cpu: no GPU is used"
    return open_gpus(engine_cls.gpus_required(cfg.backend))


@dataclass
class Measured:
    """The measured window: what the engine returned, its energy, other GPU tenants and host CPU load seen."""
    outputs: List[RequestResult]
    window: WindowEnergy
    busy: Dict[int, int]
    host: host_cpu.HostLoad


class Experiment:
    """One measured job inside the measurement process."""

    def __init__(self, config: Config, job_dir: Path, device: str, device_idle: DeviceIdle,
                 stage: Callable[[Stage], None] = lambda s: None, endpoint: Any = None,
                 kept: Optional[KeptEngine] = None, keep: Optional[Tuple[Optional[int], int]] = None,
                 import_s: Optional[float] = None, container: Any = None):
        self.config = config
        # where the engine runs: a container's facts (ContainerFacts; a server's ride on its endpoint), else the host
        self.container = container if container is not None else getattr(endpoint, "container", None)
        self.import_s = import_s  # the engine's libraries imported beforehand (preload_engine), in seconds
        self.held = kept  # an engine an earlier job loaded with the same build (reuse_engine), or None
        self.keep = keep  # (capacity to build for, builds so far): keep the engine loaded after an ok job
        self.kept: Optional[KeptEngine] = None  # after run: the engine kept loaded for the next job
        self.endpoint = endpoint  # the server measured over HTTP (server=launch/external), else None
        self.job_dir = job_dir
        self.device = device
        self.device_idle = device_idle
        self.set_stage = stage
        self.stage = Stage.start
        self.warnings: List[str] = list(device_idle.warnings) + list(getattr(endpoint, "warnings", []))
        self.scrape = server_metrics.ServerScrape(why_not="the job ended before its check")  # the server's /metrics

    def _stage(self, stage: Stage) -> None:
        self.stage = stage
        self.set_stage(stage)
        log.debug("stage: %s", stage.value)

    def run(self) -> ResultRow:
        """Measure, write the job's files (results.parquet last) and return the result row."""
        cfg = self.config
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's order = NVML's order
        outcome = Outcome(config_hash=config_hash(cfg),
                          started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        engine_cls = engine_class(cfg.backend.name)
        # the server serves; the engine's serving part says how to ask it and what its /metrics names are
        serving = engine_cls.serving(cfg, self.device) if self.endpoint is not None else None
        if serving is not None:
            from llem.serving.client import ServerEngine

            engine = ServerEngine(cfg, self.device, self.endpoint, serving.request_extras)
        elif self.held is not None:
            (engine := self.held.engine).reconfigure(cfg)
        else:
            engine = engine_cls(cfg, self.device)
            engine.build_for = self.keep[0] if self.keep else None
        gpus, warns, reason = metered_gpus(cfg, engine_cls, self.device)
        self.warnings.extend(warns)
        sampler = Sampler(gpus, cfg.energy.sample_interval_ms / 1000.0)
        if self.endpoint is not None and self.endpoint.mode == "launch" and self.endpoint.pid:
            sampler.count_tree(self.endpoint.pid)  # the server's processes hold the model and its cache
        sampler.start()
        meter = EnergyMeter(gpus, sampler, sync=lambda: None, null_reason=reason)
        parts: Dict[type, Any] = {ContainerFacts: self.container or on_host()}
        req_rows: List[RequestRow] = []
        measure_t0: Optional[float] = None
        host: Optional[HostWindows] = None
        info: Optional[EngineInfo] = None
        flags: List[str] = []
        plan = sizing.for_job(cfg, engine, on_gpu=bool(gpus))
        parts[Sizing] = sizing.part(plan, None)
        try:
            self._stage(Stage.workload)
            work = self._build(plan.num_requests, parts)
            self._stage(Stage.check)
            engine.check()
            own = serving.metric_table() if serving is not None else None
            self.scrape = server_metrics.at_check(cfg, self.endpoint, own, lambda: sampler.phase)
            host = HostWindows(cfg.energy.meters, cfg.energy.country_iso_code, self.job_dir)
            meter.sync = engine.synchronize
            self._stage(Stage.load)
            load = self._load(engine, meter, host, parts)
            self._check_uuids(engine, gpus)
            self._stage(Stage.warmup)
            warm = self._warmup(meter, engine, work, predict=plan.auto and plan.min_window_s is not None)
            work = self._size_for_window(plan, work, warm, parts)
            parts[Sizing] = sizing.part(plan, len(work.requests))
            parts[OutsideWindow] = OutsideWindow(
                engine_import_s=self.import_s if load else None,
                load_s=load.duration_s if load else None, load_energy_j=load.energy_j if load else None,
                warmup_s=warm.window.duration_s if warm.window else None,
                warmup_energy_j=warm.window.energy_j if warm.window else None,
                warmup_batches_run=warm.batches_run, warmup_latency_cv=warm.latency_cv)
            self._stage(Stage.baseline)
            loaded_idle, loaded_rows = self._loaded_idle(meter, sampler, gpus)
            self._stage(Stage.measure)
            measured = self._measure(meter, engine, work, host, gpus)
            peak = sizing.in_service_peak(measured.outputs)
            while (more := sizing.remeasure_count(plan, measured.window.duration_s, peak[0])) is not None:
                log.warning("the window lasted %.2f s with at most %s requests in service at once, under "
                            "measure.min_window_s=%g s: measuring again with %d requests (the short window is "
                            "discarded)", measured.window.duration_s, peak[0], cfg.measure.min_window_s, more)
                work = self._build(more, parts)
                measured = self._measure(meter, engine, work, host, gpus)
                peak = sizing.in_service_peak(measured.outputs)
            parts[Sizing], parts[host_cpu.HostLoad] = sizing.part(plan, len(work.requests), peak), measured.host
            measure_t0 = measured.window.t0
            window, outputs = measured.window, measured.outputs
            in_window = sampler.between(window.t0, window.t1)
            found = doubt.window_flags(window, in_window, [g.facts() for g in gpus],
                                       measured.busy, plan.min_window_s or 0.0, sizing.hint(plan))
            found += host.flags()
            found += doubt.host_flags(self.job_dir, window) + host_cpu.flags(measured.host, window.duration_s)
            found += doubt.baseline_flags("device_idle", self.device_idle.rows)
            if loaded_idle is not None:
                found += doubt.baseline_flags("loaded_idle", loaded_rows)
            info = engine.info()
            req_rows = metrics.request_rows(outputs, window.t0)  # kept in requests.parquet, also if all failed
            metrics.label_rows(req_rows, work.requests)
            load_metrics.check_some_succeeded(outputs, "measured window")
            parts.update(window_parts(cfg, engine, work, outputs, req_rows, window, loaded_idle, sampler, info,
                                      self.device_idle, self.warnings))
            if self.held is not None:
                self.held.note_loaded_idle(parts[Baselines], window.duration_s, self.job_dir.name)
            energy = parts[EnergySummary]
            baseline_w = 0.0 if cfg.baseline.kind == BaselineKind.none else energy.baseline_power_w
            parts[LoadMetrics], load_flags = load_metrics.load_part(outputs, req_rows, window.duration_s, cfg)
            found += load_flags
            parts[ServerMetrics], server_flags = self.scrape.part(window.t0, window.t1, outputs)
            found += server_flags
            if cfg.measure.steady_state:
                span = load_metrics.arrival_span(outputs) if cfg.load.timed else None
                parts[SteadyState] = phases.steady_state(outputs, plan.capacity,
                                                         in_window, baseline_w, span)
            steady = parts.get(SteadyState)
            found += sizing.flags(plan, len(outputs), cfg.measure.steady_state,
                                  steady.steady_state_null_reason if steady and steady.steady_state_s is None else None)
            flags = sorted({f.code for f in found})
            self.warnings.extend(f.message for f in found)
            prefilled: List[RequestResult] = []  # what the prefill pass returned
            if cfg.measure.prefill:
                self._stage(Stage.prefill)
                parts[PrefillDecode] = self._prefill(meter, engine, work, host, window, outputs, baseline_w,
                                                     prefilled)
            parts[EnergyAttribution] = request_energy.attribute(
                cfg, req_rows, outputs, in_window, window, baseline_w, energy.gpu_energy_adjusted_j,
                parts.get(PrefillDecode), prefilled, info.versions, gpus[0].name if gpus else None, self.job_dir.name)
            parts[ServerFacts] = load_metrics.server_part(self.endpoint, getattr(engine, "prompt", None),
                                                          cfg.server.api)
            parts[HostEnergy], parts[CodecarbonFacts] = host.result(window.energy_j,
                                                                    gpu_used=self.device == "cuda" or bool(gpus))
            outcome.status = "ok"
        except Exception as exc:  # every failure becomes a result row; the sweep goes on
            outcome.status, outcome.error_type, outcome.error_stage = "failed", type(exc).__name__, self.stage.value
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.error("failed during %s: %s", self.stage.value, outcome.error)
            log.debug("%s", traceback.format_exc())
        finally:
            sampler.stop()
            if host is not None:
                host.close()
                self.warnings.extend(host.warnings)
            self._keep_or_close(engine, outcome.status == "ok")
        self._stage(Stage.write)
        ts = timeseries(self.device_idle.rows, sampler.rows + self.scrape.rows(), measure_t0)
        warnings = list(dict.fromkeys(self.warnings))
        for warning in warnings:
            log.warning("%s", warning)
        parts[Outcome] = outcome
        parts[Notes] = Notes(flags=flags, warnings=warnings, timeseries_rows=len(ts))
        row = assemble(parts, config=cfg, engine_versions=info.versions if info else None,
                       engine_resolved=info.resolved if info else _empty(engine_cls.resolved_class),
                       env=environment.capture([g.facts() for g in gpus], gpus[0].nvml if gpus else None))
        results.write_rows(req_rows, self.job_dir / results.REQUESTS, RequestRow)
        results.write_rows(ts, self.job_dir / results.TIMESERIES, TimeseriesRow)
        results.write_result(row, self.job_dir)
        return row

    # -- the engine: loaded here, or kept from an earlier job ----------------------------------
    def _load(self, engine, meter: EnergyMeter, host: HostWindows, parts: Dict[type, Any]) -> Optional[WindowEnergy]:
        """Load the engine (timed and metered), or take the kept one (None: no load was paid here)."""
        cfg, held = self.config, self.held
        builds = self.keep[1] if self.keep else None
        if held is not None:
            parts[BuildCache], parts[EngineReuse] = held.build_cache, held.serve_next()
            return None
        if self.import_s is None and self.endpoint is None:  # not imported beside the floor: now, outside load_s
            self.import_s = preload_engine(cfg, self.device)
        log.info("loading %s (%s weights, %s) on %s …", cfg.model.name, cfg.model.weights.value,
                 cfg.model.dtype.value, self.device)
        root = Path(cfg.cache_dir).expanduser()
        cache = engine.compile_cache(root)
        compile_cache.apply(cache)
        before = compile_cache.snapshot(cache)
        load = host.around("load", lambda: self._window(meter, "load", engine.load))
        parts[BuildCache] = compile_cache.outcome(cache, root, before, compile_cache.snapshot(cache))
        parts[EngineReuse] = EngineReuse(engine_reused=False, engine_build_s=load.duration_s, num_engine_jobs=1,
                                         engine_build_job=self.job_dir.name, num_engine_builds=builds)
        log.info("loaded %s on %s in %.1f s (compile cache: %s)", cfg.model.name, self.device, load.duration_s,
                 parts[BuildCache].compile_cache)
        if self.keep:
            self.held = KeptEngine(engine=engine, build_job=self.job_dir.name, build_s=load.duration_s,
                                   build_cache=parts[BuildCache], num_builds=builds)
        return load

    def _keep_or_close(self, engine, ok: bool) -> None:
        """Keep the engine loaded for the next job (reuse_engine, and this job ended ok), else close it."""
        if ok and self.keep and self.held is not None and self.held.engine is engine:
            self.kept = self.held
            return
        try:
            engine.close()
        except Exception as exc:
            log.warning("engine close: %s", exc)

    # -- phases ---------------------------------------------------------------------------
    def _window(self, meter: EnergyMeter, phase: str, fn: Callable[[], Any]) -> WindowEnergy:
        mark = meter.start(phase)
        fn()
        window = meter.stop(mark)
        self.warnings.extend(window.warnings)
        return window

    def _warmup(self, meter: EnergyMeter, engine, work: workload.Workload, predict: bool = False) -> Warmup:
        return warm_up(self.config, engine, work, lambda run: self._window(meter, "warmup", run), predict,
                       self.warnings)

    def _build(self, n: int, parts: Dict[type, Any]) -> workload.Workload:
        """The workload of ``n`` requests with their output lengths and arrival times; its row parts."""
        work = workload.build(self.config, n)
        shaped = arrivals.shape(work.requests, self.config)
        parts[WorkloadCounts] = work.counts()
        parts[OutputLengths] = arrivals.lengths_part(work.requests, self.config, shaped)
        return work

    def _size_for_window(self, plan: sizing.Plan, work: workload.Workload, warm: Warmup,
                         parts: Dict[type, Any]) -> workload.Workload:
        """More whole waves when the warm-up says the window would be shorter than measure.min_window_s. With
        natural lengths a wave's time is scaled to the workload's mean length, and once more to that of the
        longer workload (its requests draw lengths of their own)."""
        cfg = self.config
        for _ in range(2):
            mean_len = sizing.asked_mean(work.requests, cfg.output_len, cfg.output_len_max)
            wave_s = sizing.wave_for_lengths(warm.fastest_s, warm.fastest_len_mean, mean_len)
            n = sizing.extend_for_window(plan, None if cfg.load.timed else wave_s)
            if n <= len(work.requests):
                return work
            log.info("%d requests (%d waves of %d) for a window of about %.1f s: one wave of %.1f output tokens "
                     "a request takes about %.2f s, by the warm-up", n, round(plan.waves_of(n)), plan.capacity,
                     plan.estimate_s, mean_len, wave_s)
            work = self._build(n, parts)
        return work

    def _loaded_idle(self, meter: EnergyMeter, sampler: Sampler, gpus: List[GpuReader]
                     ) -> Tuple[Optional[WindowEnergy], List[Dict[str, Any]]]:
        """The loaded-idle floor and its samples: metered now, or the kept engine's while recent
        (baseline.loaded_idle_reuse_s)."""
        cfg, held = self.config.baseline, self.held
        if not gpus or cfg.loaded_idle_s <= 0:
            return None, []
        reused = held.recent_loaded_idle(cfg.loaded_idle_reuse_s) if held is not None else None
        if reused is not None:
            return reused
        sampler.phase = "settle"
        time.sleep(cfg.loaded_settle_s)  # measured on an H100: ~0.3 s of the last batch's tail
        log.info("loaded-idle baseline: %.1f s", cfg.loaded_idle_s)
        idle = meter.idle("loaded_idle", cfg.loaded_idle_s)
        rows = sampler.between(idle.t0, idle.t1)
        if held is not None:
            held.keep_loaded_idle(idle, rows, self.job_dir.name,
                                  clean=not idle.warnings and not doubt.baseline_flags("loaded_idle", rows))
        return idle, rows

    def _measure(self, meter: EnergyMeter, engine, work: workload.Workload, host: HostWindows,
                 gpus: List[GpuReader]) -> Measured:
        cfg = self.config
        server_pid = getattr(self.endpoint, "pid", None)
        busy = other_processes(gpus, expect_own=True, server_pid=server_pid) if gpus else {}
        engine.reset_memory_peak()
        lengths = (f"{cfg.input_len} → {cfg.output_len if cfg.output_len is not None else 'natural'} tokens"
                   if cfg.load.trace is None else f"lengths and arrivals of {Path(cfg.load.trace).name}")
        log.info("measuring %d requests (batch %s, %s)", len(work.requests), cfg.batch, lengths)
        with ProgressBar(cfg.progress, len(work.requests)) as bar:
            def measured():
                mark, cpu0 = meter.start("measure"), host_cpu.edge(server_pid)
                outputs = engine.generate(work.requests, cfg.output_len, bar.update)
                window = meter.stop(mark)
                return outputs, window, host_cpu.between(cpu0, host_cpu.edge(server_pid))

            with self.scrape.around():  # the server's /metrics, from just before to just after the window
                outputs, window, load = host.around("measure", measured)
        busy.update(other_processes(gpus, expect_own=True, server_pid=server_pid) if gpus else {})
        return Measured(outputs, window, busy, load)

    def _prefill(self, meter: EnergyMeter, engine, work: workload.Workload, host: HostWindows,
                 window: WindowEnergy, outputs: List[RequestResult], baseline_w: Optional[float],
                 prefilled: List[RequestResult]) -> PrefillDecode:
        """The prefill pass (output length 1, every request at once); what it returned goes into ``prefilled``."""
        pre = host.around("prefill", lambda: self._window(meter, "prefill", lambda: prefilled.extend(
            engine.generate([at_once(r) for r in work.requests], 1, lambda n: None))))
        cols, warns = phases.prefill_decode(
            window.duration_s, window.energy_j, pre.duration_s, pre.energy_j, baseline_w,
            sum(o.input_tokens for o in outputs), sum(o.output_tokens for o in outputs), len(outputs))
        self.warnings.extend(warns)
        return cols

    def _check_uuids(self, engine, gpus: List[GpuReader]) -> None:
        seen = engine.device_uuids()
        if seen and gpus:
            metered = [g.uuid for g in gpus]
            if seen != metered[: len(seen)]:
                self.warnings.append(f"engine runs on GPUs {seen} but NVML meters {metered}: energy is misattributed")

def _empty(cls: Optional[type]) -> Any:
    return cls() if cls is not None else None
