"""The measurement-protocol part of the schema: warm-up, idle baselines, energy meters, extra
windows. Re-exported by :mod:`llem.config`, the schema's entry point; each key is defined once, here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from llem.support.errors import require as _require


class BaselineKind(Enum):
    device_idle = "device_idle"
    loaded_idle = "loaded_idle"
    none = "none"


class AttributionRule(Enum):
    """How the measured window's energy is split over its requests (docs/method.md)."""

    work = "work"  # by the work each caused: charged prompt tokens × J/prompt token + output tokens × J/output token
    output_tokens = "output_tokens"  # by the output tokens each produced in each interval


@dataclass
class WarmupConfig:
    """Warm-up batches run after load and before the baseline; excluded from every metric (at least two
    when their fastest predicts the window's request count: ``dataset.num_requests`` null, on a GPU).

    A fixed count (``batches``), or, with ``until_cv``, batches until the coefficient of
    variation of the last ``cv_window`` batch latencies is at most ``until_cv`` (``batches``
    is then the most run). The batches run and the final CV are recorded.
    """

    batches: int = 1
    output_len: Optional[int] = None  # None: the measured output length
    until_cv: Optional[float] = None  # e.g. 0.02: stop once latencies settle within 2 %
    cv_window: int = 3

    def __post_init__(self) -> None:
        _require(self.batches >= 0, "warmup.batches", self.batches, "an integer >= 0")
        if self.output_len is not None:
            _require(self.output_len >= 1, "warmup.output_len", self.output_len, "null or an integer >= 1")
        _require(self.cv_window >= 2, "warmup.cv_window", self.cv_window, "an integer >= 2")
        if self.until_cv is not None:
            _require(0 < self.until_cv < 1, "warmup.until_cv", self.until_cv, "null or a fraction in (0, 1)")
            _require(self.batches >= self.cv_window, "warmup.batches", self.batches,
                     f"an integer >= warmup.cv_window ({self.cv_window}) when warmup.until_cv is set")


@dataclass
class BaselineConfig:
    """Idle power floors. ``kind`` names the one subtracted into ``gpu_energy_adjusted_j``.

    device_idle: no CUDA context on the GPU, measured by the job's parent before the
    measurement process starts (after ``settle_s`` for the previous context to close); a later
    job of the same sweep on the same GPUs reuses it while it is younger than
    ``device_idle_reuse_s`` and was taken cleanly (the row says which one it used, and when).
    loaded_idle: the engine loaded and idle, measured in the measurement process; a later job
    measuring on the same kept engine (``reuse_engine``) reuses it while it is younger than
    ``loaded_idle_reuse_s`` and was taken cleanly.
    """

    kind: BaselineKind = BaselineKind.device_idle
    settle_s: float = 3.0
    device_idle_s: float = 5.0
    device_idle_reuse_s: float = 900.0  # later jobs of a sweep on the same GPUs reuse a floor this recent; 0: never
    loaded_settle_s: float = 1.0  # after warm-up, before loaded idle: the power of the last batch tails off
    loaded_idle_s: float = 5.0
    loaded_idle_reuse_s: float = 900.0  # later jobs on the same kept engine reuse a floor this recent; 0: never

    def __post_init__(self) -> None:
        for key in ("settle_s", "device_idle_s", "device_idle_reuse_s", "loaded_settle_s", "loaded_idle_s",
                    "loaded_idle_reuse_s"):
            value = getattr(self, key)
            _require(value >= 0, f"baseline.{key}", value, "a number of seconds >= 0")
        if self.kind == BaselineKind.device_idle:
            _require(self.device_idle_s > 0, "baseline.device_idle_s", self.device_idle_s, "> 0 with kind=device_idle")
        if self.kind == BaselineKind.loaded_idle:
            _require(self.loaded_idle_s > 0, "baseline.loaded_idle_s", self.loaded_idle_s, "> 0 with kind=loaded_idle")


METERS = ("nvml", "codecarbon")


@dataclass
class EnergyConfig:
    """Energy meters. ``nvml`` (always on) meters the GPUs; ``codecarbon`` adds the host's CPU and
    RAM energy and CO2 from an offline carbon intensity: ``country_iso_code`` (3 letters, e.g. FRA),
    or null for codecarbon's world average."""

    sample_interval_ms: float = 100.0  # the H100 energy counter updates about every 100 ms
    meters: List[str] = field(default_factory=lambda: ["nvml"])
    country_iso_code: Optional[str] = None

    def __post_init__(self) -> None:
        _require(
            10 <= self.sample_interval_ms <= 10_000,
            "energy.sample_interval_ms",
            self.sample_interval_ms,
            "a number of milliseconds in [10, 10000]",
        )
        meters = list(self.meters)
        _require(all(m in METERS for m in meters) and len(set(meters)) == len(meters), "energy.meters", meters,
                 "a list of distinct meters from nvml, codecarbon")
        _require("nvml" in meters, "energy.meters", meters, "a list that includes nvml (the GPU meter)")
        code = self.country_iso_code
        _require(code is None or bool(re.fullmatch(r"[A-Z]{3}", str(code))), "energy.country_iso_code", code,
                 "null (world average) or a 3-letter upper-case ISO 3166 code such as USA, FRA, DEU")


@dataclass
class MeasureConfig:
    """How long the measured window is, and extra windows besides it.

    With ``dataset.num_requests`` null, a job measures ``waves`` times the sequences the engine holds
    at once (so the batch is full and there is a steady state), and on a GPU as many more whole waves
    as the warm-up predicts are needed for a window of at least ``min_window_s`` (a window that still
    comes out short is measured again, longer, twice at most; at most ``max_requests``).
    prefill: a prefill-only pass (output length 1) of the same workload after the measured
    window; decode = measured − prefill. steady_state: the part of the measured window where
    the engine held ``batch`` sequences (needs more requests than ``batch``). ``energy_attribution``: the
    rule that splits the window's energy over its requests (``work``: by the prompt and output work each caused,
    weighted by J per prompt and per output token; ``output_tokens``: by the output tokens each produced); the
    other rule's figures are always written beside it. ``max_window_s`` bounds the
    whole measured window: an arrival schedule longer than it is refused before anything loads, and the
    server client sends nothing after it and ends the requests still in flight then as errors.
    """

    waves: int = 4
    min_window_s: float = 10.0  # on a GPU: the NVML counter steps every ~0.1 s and the window must dwarf its edges
    max_requests: int = 10_000
    prefill: bool = False
    steady_state: bool = True
    max_window_s: float = 3600.0  # the longest the measured window may last (s)
    energy_attribution: AttributionRule = AttributionRule.work

    def __post_init__(self) -> None:
        _require(self.waves >= 2, "measure.waves", self.waves,
                 "an integer >= 2 (one wave fills the batch; a steady state needs more)")
        _require(0 <= self.min_window_s <= 3600, "measure.min_window_s", self.min_window_s,
                 "a number of seconds in [0, 3600] (0: no minimum)")
        _require(self.max_requests >= 1, "measure.max_requests", self.max_requests, "an integer >= 1")
        _require(self.max_window_s > 0 and self.max_window_s < float("inf"), "measure.max_window_s",
                 self.max_window_s, "a finite number of seconds > 0")
        _require(self.max_window_s >= self.min_window_s, "measure.max_window_s", self.max_window_s,
                 f"a number of seconds >= measure.min_window_s ({self.min_window_s:g})")
