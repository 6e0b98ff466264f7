"""The result row of one job (``results.parquet``): its columns, declared once as typed parts.

Each phase of the measurement returns one of these parts; the row is assembled from them once,
at the end (:class:`ResultRow`). A part's fields are its columns: the annotation is the type,
``col(...)`` the meaning. Besides the fixed parts there are three families: ``cfg.*`` (typed by
the config schema), ``engine.*`` (each engine's versions and resolved settings, typed by the
engine's own dataclass) and ``codecarbon.*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Tuple

from llem.results.attribution import EnergyAttribution
from llem.results.load import EnginePrefixCache, LoadMetrics, OutputLengths, ServerFacts, ServerMetrics
from llem.results.preparation import BuildCache, ContainerFacts, EngineReuse, OutsideWindow, Sizing, SweepPlace
from llem.results.schema import (
    JSON,
    STR,
    Column,
    col,
    columns_of,
    config_columns,
    config_values,
    type_of,
    values_of,
)


class Stage(Enum):
    """Where a job was when it ended (``error_stage``), in the order a job passes through them."""

    config = "config"  # composing and validating the config, before anything runs
    start = "start"  # the job's parent: devices, locks, the measurement process
    workload = "workload"
    check = "check"  # the engine's checks, before loading
    load = "load"
    warmup = "warmup"
    baseline = "baseline"  # the idle baselines (device idle is taken by the parent)
    measure = "measure"
    prefill = "prefill"
    write = "write"


@dataclass
class Outcome:
    """How the job ended."""

    status: str = col("ok, or failed (error, error_type and error_stage say why)", default="failed")
    error: Optional[str] = col("the error message of a failed job (secrets scrubbed)")
    error_type: Optional[str] = col("the exception's class (ConfigError, DeviceError, ProcessDied, NoResult, …)")
    error_stage: Optional[str] = col("the stage it failed in: " + ", ".join(s.value for s in Stage))
    config_hash: Optional[str] = col("hash of the measured settings (not repeat, not switches); resume key")
    started_at: Optional[str] = col("UTC time the measurement began (ISO 8601)")
    schema_version: int = col("version of the result schema the file follows (older files: null)",
                              default=4)


@dataclass
class WorkloadCounts:
    """The requests measured: how many, their prompt lengths, what the dataset cut or skipped."""

    num_requests: Optional[int] = col("requests measured")
    input_tokens_total: Optional[int] = col("prompt tokens of all requests")
    input_tokens_min: Optional[int] = col("shortest prompt (tokens)")
    input_tokens_p50: Optional[float] = col("median prompt length (tokens)")
    input_tokens_mean: Optional[float] = col("mean prompt length (tokens)")
    input_tokens_p90: Optional[float] = col("90th-percentile prompt length (tokens)")
    input_tokens_max: Optional[int] = col("longest prompt (tokens)")
    prompts_read: Optional[int] = col("source records looked at to build the requests")
    prompts_truncated: Optional[int] = col("prompts cut to input_len")
    prompts_dropped_short: Optional[int] = col("prompts skipped: shorter than dataset.min_input_len")
    prompts_dropped_long: Optional[int] = col("prompts skipped: longer than input_len with long_prompts=drop "
                                              "(dataset=conversations: turns left out, their prompt past input_len)")
    prompts_repeated: Optional[int] = col("requests that reuse a prompt: the source ran out before the count")
    workload_sha256: Optional[str] = col("hash of the token ids measured: equal means the same prompts")
    prefix_reusable_tokens_total: Optional[int] = col("prompt tokens a prefix cache could serve, over all requests "
                                                      "(dataset=shared_prefix or conversations; requests.parquet "
                                                      "has each)")


@dataclass
class Throughput:
    """The measured window and its throughput."""

    output_tokens_total: Optional[int] = col("output tokens the engine returned in the window")
    output_tokens_expected: Optional[int] = col("num_requests × output_len: a mismatch is warned about")
    window_s: Optional[float] = col("measured window, device synchronised at both edges (s)")
    output_tok_per_s: Optional[float] = col("output tokens per second of the window", summary=True, label="tok/s",
                                            fmt=",.1f")
    total_tok_per_s: Optional[float] = col("input + output tokens per second of the window")
    requests_per_s: Optional[float] = col("requests completed without an error per second of the window (the rate "
                                          "achieved)",
                                          summary=True, label="req/s", fmt=".3g")


@dataclass
class Padding:
    """Work the engine did beyond the requested tokens (static-batch padding)."""

    tokens_computed: Optional[int] = col("token positions the engine computed, padding included (PyTorch)")
    tokens_requested: Optional[int] = col("token positions the requests asked for")
    padding_overhead_pct: Optional[float] = col("(computed − requested) / requested × 100")


@dataclass
class GpuEnergy:
    """Raw GPU energy of the measured window and how it was measured."""

    energy_method: str = col("nvml_counter, nvml_power_instant_integral, nvml_power_average_integral or none",
                             default="none")
    energy_null_reason: Optional[str] = col("why GPU energy is null, when it is")
    gpu_energy_j: Optional[float] = col("raw GPU energy of the window, summed over the job's GPUs (J)")
    gpu_energy_j_per_gpu: Optional[List[float]] = col("raw window energy of each GPU (J)")
    gpu_energy_integrated_j: Optional[float] = col("trapezoid integral of sampled instant power (J): a cross-check")
    energy_integral_vs_counter_pct: Optional[float] = col("(integral − counter) / counter × 100")
    avg_power_w: Optional[float] = col("raw energy / window (W)", summary=True, label="avg W", fmt=".0f")
    peak_power_w: Optional[float] = col("highest sampled power, summed over GPUs (W)")


@dataclass
class Baselines:
    """The two idle floors: no CUDA context (device idle) and the engine loaded (loaded idle)."""

    device_idle_power_w: Optional[float] = col("idle power with no CUDA context, summed over GPUs (W)")
    device_idle_power_w_per_gpu: Optional[List[float]] = col("device-idle power of each GPU (W)")
    device_idle_source: Optional[str] = col("measured by this job, or reused from an earlier job of the sweep on "
                                            "the same GPUs (baseline.device_idle_reuse_s)")
    device_idle_taken_at: Optional[str] = col("UTC time the device-idle floor was metered (ISO 8601)")
    device_idle_age_s: Optional[float] = col("how long before this job's measurement began it was metered (s)")
    device_idle_job: Optional[str] = col("the job dir (name) that metered a reused device-idle floor")
    loaded_idle_power_w: Optional[float] = col("idle power with the engine loaded, summed over GPUs (W)")
    loaded_idle_power_w_per_gpu: Optional[List[float]] = col("loaded-idle power of each GPU (W)")
    loaded_idle_age_s: Optional[float] = col("how long before this job's window the loaded-idle floor was metered "
                                             "(s)")
    loaded_idle_job: Optional[str] = col("the job dir (name) that metered a reused loaded-idle floor (the same kept "
                                         "engine; baseline.loaded_idle_reuse_s)")


@dataclass
class EnergySummary:
    """The floor subtracted and the energy per unit of work."""

    baseline_kind: Optional[str] = col("the idle floor subtracted: device_idle, loaded_idle or none")
    baseline_power_w: Optional[float] = col("power of that floor (W)")
    baseline_energy_j: Optional[float] = col("baseline_power_w × window_s (J)")
    gpu_energy_adjusted_j: Optional[float] = col("gpu_energy_j − baseline_energy_j, never clipped (J)", summary=True)
    j_per_output_token: Optional[float] = col("adjusted energy per output token (J)", summary=True, label="J/token",
                                              fmt=".4g")
    j_per_output_token_raw: Optional[float] = col("raw energy per output token (J)", summary=True)
    j_per_request: Optional[float] = col("adjusted energy per request (J)", summary=True, label="J/req", fmt=".4g")
    output_tokens_per_j: Optional[float] = col("output tokens per adjusted joule")


@dataclass
class Memory:
    """Memory peaks."""

    gpu_memory_allocated_peak_mib: Optional[float] = col("engine's peak device allocation, summed over GPUs (MiB)")
    gpu_memory_used_peak_mib: Optional[float] = col("NVML's peak device memory in use during the window (MiB)")
    cpu_rss_peak_mib: Optional[float] = col("peak resident memory of the measurement process, plus a launched "
                                            "server's whole process tree (server=launch), summed (MiB)")
    cpu_rss_null_reason: Optional[str] = col("why cpu_rss_peak_mib is null (server=external: not llem's processes)")


@dataclass
class ModelFacts:
    """The model as loaded."""

    model_parameters: Optional[int] = col("parameters of the model as defined")
    model_weight_bytes: Optional[int] = col("bytes the weights occupy as loaded")
    weight_precision: Optional[str] = col("as stored: float16, bfloat16, int8, nf4, fp8 …")
    compute_precision: Optional[str] = col("what the matmuls run in")
    flops_estimate: Optional[float] = col("2 × parameters × tokens (FLOPs; an estimate, attention excluded)")


@dataclass
class Latency:
    """Latency over the window's requests (ITL over every inter-token gap)."""

    ttft_ms_mean: Optional[float] = col("mean time to first token over requests (ms): from each request's due "
                                        "time (see load_mode), queueing included")
    ttft_ms_p50: Optional[float] = col("median TTFT (ms)", summary=True)
    ttft_ms_p90: Optional[float] = col("90th-percentile TTFT (ms)")
    ttft_ms_p99: Optional[float] = col("99th-percentile TTFT (ms)", summary=True)
    e2e_ms_mean: Optional[float] = col("mean end-to-end latency (ms): from each request's due time (see "
                                       "load_mode), queueing included")
    e2e_ms_p50: Optional[float] = col("median end-to-end latency (ms)")
    e2e_ms_p99: Optional[float] = col("99th-percentile end-to-end latency (ms)")
    itl_ms_mean: Optional[float] = col("mean inter-token latency over every gap (ms)")
    itl_ms_p50: Optional[float] = col("median inter-token latency over every gap (ms)", summary=True)
    itl_ms_p99: Optional[float] = col("99th-percentile inter-token latency (ms)")
    tpot_ms_mean: Optional[float] = col("mean time per output token after the first (ms)")


@dataclass
class SteadyState:
    """The part of the window in which the engine held its full batch."""

    steady_state_s: Optional[float] = col("part of the window in which the engine held its full batch (s)")
    steady_state_output_tokens: Optional[int] = col("output tokens stamped inside the steady state")
    steady_state_output_tok_per_s: Optional[float] = col("their rate (tokens/s)")
    steady_state_energy_j: Optional[float] = col("GPU energy of the steady state, interpolated counter (J)")
    steady_state_energy_adjusted_j: Optional[float] = col("minus baseline power × its duration (J)")
    steady_state_j_per_output_token: Optional[float] = col("adjusted steady-state energy per output token (J)")
    steady_state_null_reason: Optional[str] = col("why there is no steady state; null when there is one")


@dataclass
class PrefillDecode:
    """The prefill/decode split (measure.prefill): a prefill-only pass of the same workload."""

    prefill_s: Optional[float] = col("prefill-only pass (output length 1) of the same workload (s)")
    prefill_energy_j: Optional[float] = col("its raw GPU energy (J)")
    prefill_energy_adjusted_j: Optional[float] = col("its adjusted energy (J)")
    prefill_j_per_input_token: Optional[float] = col("adjusted prefill energy per input token (J)")
    decode_s: Optional[float] = col("window_s − prefill_s, never clipped (s)")
    decode_energy_j: Optional[float] = col("raw window energy − raw prefill energy (J)")
    decode_energy_adjusted_j: Optional[float] = col("adjusted decode energy (J)")
    decode_j_per_output_token: Optional[float] = col("adjusted decode energy per output token after the first (J)")


@dataclass
class HostEnergy:
    """Host CPU and RAM energy and CO2 (energy.meters=[nvml,codecarbon])."""

    cpu_energy_j: Optional[float] = col("host CPU energy of the window, from codecarbon (J)")
    ram_energy_j: Optional[float] = col("host RAM energy of the window, codecarbon's estimate (J)")
    load_cpu_energy_j: Optional[float] = col("host CPU energy of the load phase (J)")
    load_ram_energy_j: Optional[float] = col("host RAM energy of the load phase (J)")
    prefill_cpu_energy_j: Optional[float] = col("host CPU energy of the prefill pass (J)")
    prefill_ram_energy_j: Optional[float] = col("host RAM energy of the prefill pass (J)")
    cpu_energy_method: Optional[str] = col("how codecarbon measured the CPU: codecarbon_intel_rapl, …_cpu_load …")
    ram_energy_method: Optional[str] = col("how codecarbon estimated RAM")
    host_energy_null_reason: Optional[str] = col("why host energy is null, when it is")
    energy_total_j: Optional[float] = col("GPU raw + CPU + RAM energy of the window (J)")
    carbon_intensity_g_per_kwh: Optional[float] = col("carbon intensity used (g CO2e per kWh)")
    co2_g: Optional[float] = col("energy_total_j × carbon intensity (g CO2e)")


@dataclass
class HostLoad:
    """What else the host's CPUs did during the window (llem.energy.host_cpu): other processes, steal."""

    host_other_cpu_pct: Optional[float] = col("CPU time of processes outside the job's own trees during the window, "
                                              "as % of its CPU capacity (window × logical CPUs)")
    host_steal_pct: Optional[float] = col("CPU time the hypervisor stole during the window, as % of its capacity")
    host_load_null_reason: Optional[str] = col("why host_other_cpu_pct or host_steal_pct is null, when one is")


@dataclass
class CodecarbonFacts:
    """What codecarbon detected (codecarbon.* columns)."""

    version: Optional[str] = col("codecarbon version")
    cpu_model: Optional[str] = col("CPU model codecarbon detected")
    ram_total_size_gb: Optional[float] = col("RAM size codecarbon detected (GB)")
    tracking_mode: Optional[str] = col("codecarbon's tracking mode (machine: the whole host)")
    carbon_intensity_source: Optional[str] = col("where the carbon intensity came from")


@dataclass
class Notes:
    """Doubt flags and warnings."""

    flags: List[str] = col("doubt-flag codes (short_window, shared_gpu, …): see the measurement docs", factory=list)
    warnings: List[str] = col("what a person should know about the numbers, one sentence each", factory=list)
    timeseries_rows: Optional[int] = col("rows written to timeseries.parquet")


# Fixed parts, in column order, with their column prefix. cfg.* follows Outcome; engine.* follows
# ModelFacts; env.* (llem.results.environment.Environment) and codecarbon.* precede Notes.
PARTS: Tuple[Tuple[type, str], ...] = (
    (Outcome, ""), (WorkloadCounts, ""), (OutputLengths, ""), (Sizing, ""), (OutsideWindow, ""), (BuildCache, ""),
    (EngineReuse, ""), (ContainerFacts, ""), (SweepPlace, ""),
    (ServerFacts, ""), (Throughput, ""), (LoadMetrics, ""), (ServerMetrics, ""),
    (EnginePrefixCache, ""), (Padding, ""),
    (GpuEnergy, ""), (Baselines, ""), (EnergySummary, ""), (Memory, ""), (ModelFacts, ""), (Latency, ""),
    (SteadyState, ""), (PrefillDecode, ""), (EnergyAttribution, ""), (HostEnergy, ""), (HostLoad, ""),
    (CodecarbonFacts, "codecarbon."), (Notes, ""),
)


def assemble(parts: Dict[type, Any], *, config: Any = None, config_tree: Any = None, engine_versions: Any = None,
             engine_resolved: Any = None, env: Any = None) -> ResultRow:
    """The row, once, from the parts a job produced: every fixed part in declared order (a part not
    produced is all null, so ok and failed rows share one schema), ``cfg.*`` from the typed config
    (or, when it could not be validated, its DictConfig), ``engine.*`` and ``env.*``."""
    row = ResultRow()
    for cls, prefix in PARTS:
        if cls is CodecarbonFacts and env is not None:
            row.add(env, "env.")
        part = parts.get(cls)
        if cls is CodecarbonFacts and part is None:
            continue  # codecarbon.* only when the meter ran
        row.add(part if part is not None else cls(), prefix)
        if cls is Outcome:
            if config is not None:
                row.add_config(config)
            elif config_tree is not None:
                row.add_config_tree(config_tree)
        if cls is ModelFacts:
            if engine_versions:
                row.add_strings("engine.", {f"{k}_version": v for k, v in engine_versions.items()},
                                "the engine's package version")
            if engine_resolved is not None:
                row.add(engine_resolved, "engine.")
    return row


def part_columns() -> List[Column]:
    """Every fixed column of results.parquet (families cfg.*, engine.*, env.* aside), in order."""
    return [c for cls, prefix in PARTS for c in columns_of(cls, prefix)]


class ResultRow:
    """One results.parquet row: its declared columns and their values, assembled from typed parts in
    one place (:func:`assemble`); consumers read it (``row["window_s"]``), the assembly never does."""

    def __init__(self) -> None:
        self.columns: Dict[str, Column] = {}
        self.values: Dict[str, Any] = {}

    def _put(self, column: Column, value: Any) -> None:
        if column.name in self.columns and self.columns[column.name] != column:
            raise ValueError(f"column {column.name} declared twice with different types")
        self.columns[column.name] = column
        self.values[column.name] = value

    def add(self, part: Any, prefix: str = "") -> ResultRow:
        """A part (a dataclass instance): one column per field."""
        values = values_of(part, prefix)
        for column in columns_of(type(part), prefix):
            self._put(column, values[column.name])
        return self

    def add_config(self, config: Any) -> ResultRow:
        """The typed config (cfg.*): columns typed by its schema, nested configs by their own class."""
        values = config_values(config)
        for column in config_columns(config):
            self._put(column, values[column.name])
        return self

    def add_config_tree(self, node: Any) -> ResultRow:
        """A config that could not be validated (a DictConfig): typed where the schema says, else JSON."""
        for column, value in _dictconfig_columns(node, "cfg."):
            self._put(column, value)
        return self

    def add_strings(self, prefix: str, mapping: Dict[str, Optional[str]], meaning: str) -> ResultRow:
        """A family of string columns (engine.*_version)."""
        for key, value in mapping.items():
            self._put(Column(prefix + key, STR, True, meaning), None if value is None else str(value))
        return self

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.values)


def _dictconfig_columns(node: Any, prefix: str) -> List[Tuple[Column, Any]]:
    from typing import get_type_hints

    from omegaconf import DictConfig, OmegaConf

    from llem.results.schema import OPAQUE_CONFIG_KEYS

    cls = OmegaConf.get_type(node)
    hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out: List[Tuple[Column, Any]] = []
    for key in node.keys():
        child = node._get_node(key)
        name = f"{prefix}{key}"
        if isinstance(child, DictConfig) and key not in OPAQUE_CONFIG_KEYS and (
                dataclasses.is_dataclass(OmegaConf.get_type(child)) or key not in hints):
            out.extend(_dictconfig_columns(child, name + "."))
            continue
        value = OmegaConf.to_container(child, resolve=False) if isinstance(child, DictConfig) else child._value()
        kind, nullable = type_of(hints[key]) if key in hints else (JSON, True)
        if kind not in (JSON, STR):
            nullable = True  # an invalid config may leave any key unset
        out.append((Column(name, kind, nullable, f"config key {name[4:]}"), value))
    return out
