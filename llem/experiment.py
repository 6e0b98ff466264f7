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
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from llem import environment, metrics, results, workload
from llem.backends import engine_class
from llem.config import Config, config_hash, flatten, to_dict
from llem.energy import flags as doubt
from llem.energy import phases
from llem.energy.codecarbon import HostWindows
from llem.energy.nvml import GpuReader, open_gpus
from llem.energy.window import EnergyMeter, Sampler, WindowEnergy

log = logging.getLogger(__name__)

@dataclass
class DeviceIdle:
    """The no-context idle floor, measured by the parent before the measurement process starts."""

    power_w_per_gpu: List[Optional[float]] = field(default_factory=list)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def power_w(self) -> Optional[float]:
        return metrics.sum_or_none(self.power_w_per_gpu)


def other_processes(gpus: List[GpuReader], expect_own: bool) -> Dict[int, int]:
    """GPU index → number of processes other than this job's holding a context on it."""
    import psutil

    me = psutil.Process()
    own = {me.pid} | {c.pid for c in me.children(recursive=True)}
    if me.parent() is not None:
        own.add(me.parent().pid)
    out = {}
    for gpu in gpus:
        pids = gpu.processes()
        if pids is None:
            continue
        others = [p for p in pids if p not in own]
        if expect_own and pids and len(others) == len(pids):  # PIDs from another namespace: count instead
            others = others[1:]
        if others:
            out[gpu.index] = len(others)
    return out


def metered_gpus(cfg: Config, engine_cls, device: str) -> Tuple[List[GpuReader], List[str], Optional[str]]:
    """NVML readers for the GPUs the job's engine uses (by UUID from CUDA_VISIBLE_DEVICES), warnings,
    and why there are none, if so."""
    if device != "cuda":
        return [], [], "device=cpu: no GPU is used"
    return open_gpus(engine_cls.gpus_required(cfg.backend))


def device_idle_baseline(config: Config, gpus_required: int) -> DeviceIdle:
    """Idle power with no CUDA context: wait ``settle_s`` for the GPU to drop its clocks, then meter."""
    result = DeviceIdle()
    gpus, warnings, reason = open_gpus(gpus_required)
    result.warnings.extend(warnings)
    if not gpus:
        return result
    sampler = Sampler(gpus, config.energy.sample_interval_ms / 1000.0).start()
    try:
        busy = other_processes(gpus, expect_own=False)
        if busy:
            result.warnings.append(f"device idle baseline taken while other processes held GPUs {busy}: it is too high")
        sampler.phase = "settle"
        time.sleep(config.baseline.settle_s)
        window = EnergyMeter(gpus, sampler).idle("device_idle", config.baseline.device_idle_s)
    finally:
        sampler.stop()
    result.power_w_per_gpu = window.power_per_gpu_w
    result.rows = [r for r in sampler.rows if r["phase"] == "device_idle"]
    result.warnings.extend(window.warnings)
    return result


def _window_cols(prefix: str, w: Optional[WindowEnergy]) -> Dict[str, Any]:
    if w is None:
        return {f"{prefix}_s": None, f"{prefix}_energy_j": None}
    return {f"{prefix}_s": w.duration_s, f"{prefix}_energy_j": w.energy_j}


class Experiment:
    """One measured job inside the measurement process."""

    def __init__(self, config: Config, job_dir: Path, device: str, device_idle: DeviceIdle,
                 stage: Callable[[str], None] = lambda s: None):
        self.config = config
        self.job_dir = job_dir
        self.device = device
        self.device_idle = device_idle
        self.set_stage = stage
        self.stage = "start"
        self.warnings: List[str] = list(device_idle.warnings)
        self.row: Dict[str, Any] = {}

    def _stage(self, name: str) -> None:
        self.stage = name
        self.set_stage(name)
        log.debug("stage: %s", name)

    def run(self) -> Dict[str, Any]:
        cfg = self.config
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's order = NVML's order
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        engine_cls = engine_class(cfg.backend.name)
        engine = engine_cls(cfg, self.device)
        gpus, warns, reason = metered_gpus(cfg, engine_cls, self.device)
        self.warnings.extend(warns)
        sampler = Sampler(gpus, cfg.energy.sample_interval_ms / 1000.0).start()
        meter = EnergyMeter(gpus, sampler, sync=lambda: None, null_reason=reason)
        row: Dict[str, Any] = {"status": "failed", "error": None, "error_type": None, "error_stage": None,
                               "config_hash": config_hash(cfg), "started_at": started}
        row.update({f"cfg.{k}": v for k, v in flatten(to_dict(cfg)).items()})
        req_rows: List[Dict[str, Any]] = []
        measure_t0 = None
        host = None
        try:
            self._stage("workload")
            work = workload.build(cfg)
            row.update(work.counts())
            self._stage("check")
            engine.check()
            host = HostWindows(cfg.energy.meters, cfg.energy.country_iso_code, self.job_dir)
            meter.sync = engine.synchronize
            self._stage("load")
            load = host.around("load", row, lambda: self._window(meter, "load", engine.load))
            log.info("loaded %s on %s in %.1f s", cfg.model.name, self.device, load.duration_s)
            self._check_uuids(engine, gpus)
            row.update(_window_cols("load", load))
            self._stage("warmup")
            warm_window, warm_cols = self._warmup(meter, engine, work)
            row.update(_window_cols("warmup", warm_window))
            row.update(warm_cols)
            self._stage("baseline")
            loaded_idle = None
            if gpus and cfg.baseline.loaded_idle_s > 0:
                sampler.phase = "settle"
                time.sleep(cfg.baseline.loaded_settle_s)  # measured on an H100: ~0.3 s of the last batch's tail
                loaded_idle = meter.idle("loaded_idle", cfg.baseline.loaded_idle_s)
            self._stage("measure")
            busy = other_processes(gpus, expect_own=True) if gpus else {}
            engine.reset_memory_peak()
            log.info("measuring %d requests (batch %d, %d → %d tokens)", len(work.requests), cfg.batch,
                     cfg.input_len, cfg.output_len)
            with _progress(cfg, len(work.requests)) as bar:
                def measured():
                    mark = meter.start("measure")
                    return mark, engine.generate(work.requests, cfg.output_len, bar.update), meter.stop(mark)

                mark, outputs, window = host.around("measure", row, measured)
                measure_t0 = mark.t0
            busy.update(other_processes(gpus, expect_own=True) if gpus else {})
            found = doubt.window_flags(window, sampler.between(window.t0, window.t1), [g.facts() for g in gpus],
                                       busy)
            found += host.flags()
            found += doubt.baseline_flags("device_idle", self.device_idle.rows)
            if loaded_idle is not None:
                found += doubt.baseline_flags("loaded_idle", sampler.between(loaded_idle.t0, loaded_idle.t1))
            row["flags"] = sorted({f.code for f in found})
            self.warnings.extend(f.message for f in found)
            row.update(engine.work_counts())
            req_rows = metrics.request_rows(outputs, mark.t0)
            row.update(self._measured(engine, work, outputs, req_rows, window, loaded_idle, sampler))
            row.update(host.carbon(row, gpu_used=self.device == "cuda" or bool(gpus)))
            baseline_w = 0.0 if cfg.baseline.kind.value == "none" else row.get("baseline_power_w")
            if cfg.measure.steady_state:
                rows = sampler.between(window.t0, window.t1)
                steady = phases.steady_state(outputs, engine.sequences_in_flight(), rows, baseline_w)
                row.update(steady.columns())
            if cfg.measure.prefill:
                self._stage("prefill")
                pre = host.around("prefill", row, lambda: self._window(
                    meter, "prefill", lambda: engine.generate(work.requests, 1, lambda n: None)))
                cols, warns = phases.prefill_decode(
                    window.duration_s, window.energy_j, pre.duration_s, pre.energy_j, baseline_w,
                    sum(o.input_tokens for o in outputs), row["output_tokens_total"], len(outputs))
                row.update(cols)
                self.warnings.extend(warns)
            row["status"] = "ok"
        except Exception as exc:  # every failure becomes a result row; the sweep goes on
            row.update(status="failed", error_type=type(exc).__name__, error_stage=self.stage,
                       error=environment.scrub(f"{type(exc).__name__}: {exc}"))
            log.error("failed during %s: %s", self.stage, row["error"])
            log.debug("%s", environment.scrub(traceback.format_exc()))
        finally:
            sampler.stop()
            if host is not None:
                host.close()
                self.warnings.extend(host.warnings)
            try:
                engine.close()
            except Exception as exc:
                log.warning("engine close: %s", exc)
        self._stage("write")
        row.update(environment.capture([g.facts() for g in gpus], gpus[0].nvml if gpus else None))
        row["warnings"] = list(dict.fromkeys(self.warnings))
        for warning in row["warnings"]:
            log.warning("%s", warning)
        ts = self._timeseries(sampler, measure_t0)
        row["timeseries_rows"] = len(ts)
        results.write_rows(req_rows, self.job_dir / results.REQUESTS, results.REQUEST_COLUMNS)
        results.write_rows(ts, self.job_dir / results.TIMESERIES, results.TIMESERIES_COLUMNS)
        results.write_result(row, self.job_dir)
        return row

    # -- phases ---------------------------------------------------------------------------
    def _window(self, meter: EnergyMeter, phase: str, fn: Callable[[], Any]) -> WindowEnergy:
        mark = meter.start(phase)
        fn()
        window = meter.stop(mark)
        self.warnings.extend(window.warnings)
        return window

    def _warmup(self, meter: EnergyMeter, engine, work: workload.Workload):
        """Warm-up batches of as many requests as the engine holds at once, one generate call each:
        a fixed count, or until the CV of the last ``cv_window`` batch latencies is ≤ ``until_cv``."""
        cfg = self.config.warmup
        if cfg.batches == 0:
            return None, {"warmup_batches_run": 0, "warmup_latency_cv": None}
        reqs = work.requests
        size = min(len(reqs), engine.sequences_in_flight())
        out_len = cfg.output_len or self.config.output_len
        latencies: List[float] = []
        cv = None

        def run() -> None:
            nonlocal cv
            for b in range(cfg.batches):
                batch = [reqs[(b * size + i) % len(reqs)] for i in range(size)]
                t0 = time.perf_counter()
                engine.generate(batch, out_len, lambda n: None)
                engine.synchronize()
                latencies.append(time.perf_counter() - t0)
                cv = metrics.cv(latencies[-cfg.cv_window:]) if len(latencies) >= cfg.cv_window else None
                if cfg.until_cv is not None and cv is not None and cv <= cfg.until_cv:
                    return

        window = self._window(meter, "warmup", run)
        if cfg.until_cv is not None and (cv is None or cv > cfg.until_cv):
            self.warnings.append(f"warmup did not settle: batch-latency CV {cv if cv is None else f'{cv:.3f}'} "
                                 f"> warmup.until_cv={cfg.until_cv} after {len(latencies)} batches")
        return window, {"warmup_batches_run": len(latencies), "warmup_latency_cv": cv}

    def _check_uuids(self, engine, gpus: List[GpuReader]) -> None:
        seen = engine.device_uuids()
        if seen and gpus:
            metered = [g.uuid for g in gpus]
            if seen != metered[: len(seen)]:
                self.warnings.append(f"engine runs on GPUs {seen} but NVML meters {metered}: energy is misattributed")

    def _measured(self, engine, work, outputs, req_rows, window: WindowEnergy, loaded_idle, sampler) -> Dict[str, Any]:
        cfg = self.config
        out_tokens = sum(o.output_tokens for o in outputs)
        in_tokens = sum(o.input_tokens for o in outputs)
        expected = len(work.requests) * cfg.output_len
        if out_tokens != expected:
            self.warnings.append(f"engine returned {out_tokens} output tokens, expected {expected}")
        missing = {o.timing_note for o in outputs if o.timing_note}
        self.warnings.extend(f"request timing: {m}" for m in sorted(missing))
        self.warnings.extend(window.warnings)
        s = window.duration_s
        info = engine.info()
        row: Dict[str, Any] = {
            "output_tokens_total": out_tokens,
            "output_tokens_expected": expected,
            "window_s": s,
            "output_tok_per_s": out_tokens / s,
            "total_tok_per_s": (out_tokens + in_tokens) / s,
            "requests_per_s": len(outputs) / s,
            "energy_method": window.method,
            "energy_null_reason": None if window.energy_j is not None else meter_reason(window),
            "gpu_energy_j_per_gpu": window.energy_j_per_gpu or None,
            "gpu_energy_integrated_j": window.integrated_j,
            "energy_integral_vs_counter_pct": None,
            "avg_power_w": window.avg_power_w,
            "peak_power_w": window.peak_power_w,
            "device_idle_power_w": self.device_idle.power_w,
            "device_idle_power_w_per_gpu": self.device_idle.power_w_per_gpu or None,
            "loaded_idle_power_w": loaded_idle.avg_power_w if loaded_idle else None,
            "loaded_idle_power_w_per_gpu": loaded_idle.power_per_gpu_w if loaded_idle else None,
            "gpu_memory_allocated_peak_mb": engine.memory_peak_mb(),
            "gpu_memory_used_peak_mb": window.peak_memory_used_mb,
            "cpu_rss_peak_mb": max((r["rss_mb"] for r in sampler.rows if r.get("rss_mb") is not None), default=None),
            "model_parameters": info.num_parameters,
            "model_weight_bytes": info.weight_bytes,
            "weight_precision": info.weight_precision or cfg.model.dtype.value,
            "compute_precision": info.compute_precision or cfg.model.dtype.value,
            "flops_estimate": 2.0 * info.num_parameters * (in_tokens + out_tokens) if info.num_parameters else None,
        }
        row.update({f"engine.{k}_version": v for k, v in info.versions.items()})
        row.update({f"engine.{k}": v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                    for k, v in info.resolved_args.items()})
        if window.integrated_j is not None and window.energy_j and window.method == "nvml_counter":
            row["energy_integral_vs_counter_pct"] = 100.0 * (window.integrated_j - window.energy_j) / window.energy_j
        row.update(metrics.latency_summary(req_rows))
        energy = metrics.energy_summary(
            window.energy_j, s, out_tokens, len(outputs), cfg.baseline.kind.value,
            {"device_idle": self.device_idle.power_w, "loaded_idle": row["loaded_idle_power_w"]},
        )
        self.warnings.extend(energy.pop("warnings"))
        row.update(energy)
        return row

    def _timeseries(self, sampler: Sampler, t0: Optional[float]) -> List[Dict[str, Any]]:
        rows = self.device_idle.rows + sampler.rows
        if not rows:
            return []
        origin = t0 if t0 is not None else min(r["t_s"] for r in rows)
        return [{**r, "t_s": r["t_s"] - origin} for r in rows]


def meter_reason(window: WindowEnergy) -> str:
    notes = [w for w in window.warnings if w.startswith("GPU energy not measured")]
    return notes[0].split(": ", 1)[1] if notes else "not measured"


class _progress:
    """A tqdm bar over requests, shown only on a terminal."""

    def __init__(self, config: Config, total: int):
        self.bar = None
        if config.progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="req", desc="measure", leave=False)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def summary_line(row: Dict[str, Any]) -> str:
    """The one line a person reads at the end of a run."""
    if row.get("status") != "ok":
        return f"FAILED during {row.get('error_stage')}: {row.get('error')}"

    def fmt(v, spec, unit):
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    jpt = fmt(row.get("j_per_output_token"), ".4g", " J/token")
    if row.get("j_per_output_token") is None:
        jpt = f"J/token n/a ({row.get('energy_null_reason') or 'see warnings'})"
    return (f"{fmt(row.get('output_tok_per_s'), ',.1f', ' tok/s')}, {jpt}, TTFT p50 "
            f"{fmt(row.get('ttft_ms_p50'), '.1f', ' ms')}, {row.get('output_tokens_total')} tokens in "
            f"{row.get('window_s', 0):.2f} s")
