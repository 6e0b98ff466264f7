"""The load part of the schema: how requests arrive (``load``), what serves them (``server``), and the
natural output lengths used when ``output_len`` is null (``dataset.output_lengths``). Re-exported by
:mod:`llem.config`, the schema's entry point; each key is defined once, here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from llem.errors import require as _require

SERVER_MODES = ("none", "launch", "external")
PROMPT_KINDS = ("auto", "token_ids", "text")
LENGTH_DISTRIBUTIONS = ("lognormal", "uniform")


@dataclass
class LoadConfig:
    """The arrival process. ``request_rate`` requests per second (``inf``: every request at once, the
    throughput ceiling); inter-arrival gaps are gamma-distributed with shape ``burstiness`` (1: Poisson,
    < 1 burstier, > 1 steadier) and mean 1/rate, drawn with ``seed``; ``max_concurrency`` caps the requests
    in flight (null: no cap): an arrival beyond it waits, and the wait is its ``queue_ms``."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: Optional[int] = None

    def __post_init__(self) -> None:
        rate = self.request_rate
        _require(rate == math.inf or (math.isfinite(rate) and rate > 0), "load.request_rate", rate,
                 "a number of requests per second > 0, or inf (all at once)")
        _require(math.isfinite(self.burstiness) and self.burstiness > 0, "load.burstiness", self.burstiness,
                 "a gamma shape > 0 (1: Poisson arrivals)")
        if self.max_concurrency is not None:
            _require(self.max_concurrency >= 1, "load.max_concurrency", self.max_concurrency,
                     "null (no cap) or an integer >= 1")

    @property
    def timed(self) -> bool:
        """Whether requests arrive over time (a finite rate) rather than all at once."""
        return self.request_rate != math.inf


@dataclass
class ServerConfig:
    """What serves the requests. ``none``: the engine in llem's own process. ``launch``: the engine's own
    OpenAI-compatible server started by llem on the job's GPUs (``vllm serve``, ``transformers serve``,
    ``trtllm-serve``), reused by the next jobs of a sweep that need the same server. ``external``: a server
    already running at ``url`` (any engine), measured on the GPUs the job names."""

    mode: str = "none"
    url: Optional[str] = None  # external: e.g. http://127.0.0.1:8000
    host: str = "127.0.0.1"  # launch: the address it listens on
    port: int = 8000  # launch: the first port tried; one in use is skipped, never fought over
    startup_timeout_s: float = 900.0  # launch: how long the server may take to answer /health
    request_timeout_s: float = 600.0  # one request, sent to its last byte
    connect_timeout_s: float = 60.0  # one request, sent to its response headers (connection included)
    chunk_timeout_s: float = 300.0  # the longest wait for an event carrying text, from the headers or the last one
    model_name: Optional[str] = None  # the name the server serves the model under (null: its first in /v1/models)
    prompt: str = "auto"  # auto | token_ids | text: how prompts are sent (auto: token ids where the server takes them)
    args: List[str] = field(default_factory=list)  # launch: extra command-line arguments for the server
    extra_body: Dict[str, Any] = field(default_factory=dict)  # added to every request's JSON (server-specific keys)
    reuse: bool = True  # launch: consecutive jobs that need the same server keep it running

    def __post_init__(self) -> None:
        _require(self.mode in SERVER_MODES, "server.mode", self.mode, ", ".join(SERVER_MODES))
        _require(self.prompt in PROMPT_KINDS, "server.prompt", self.prompt, ", ".join(PROMPT_KINDS))
        _require(1 <= self.port <= 65535, "server.port", self.port, "a TCP port in [1, 65535]")
        for key in ("startup_timeout_s", "request_timeout_s", "connect_timeout_s", "chunk_timeout_s"):
            value = getattr(self, key)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"server.{key}", value,
                     "a finite number of seconds > 0")
        if self.mode == "external":
            url = str(self.url or "")
            _require(url.startswith(("http://", "https://")), "server.url", self.url,
                     "the server's base URL, e.g. http://127.0.0.1:8000, with server=external")


@dataclass
class OutputLengthsConfig:
    """Natural output lengths (``output_len=null``): each request asks for its own length, the dataset's
    reference completion where it has one (ShareGPT's answer, Alpaca's output), else a draw from this
    distribution (seeded by ``seed``): ``lognormal`` with median ``mean``·exp(−spread²/2) so its mean is
    ``mean`` and ``spread`` the σ of its log, or ``uniform`` over mean·(1 ± spread); clipped to [min, max]."""

    distribution: str = "lognormal"
    mean: int = 128
    spread: float = 0.6
    min: int = 1
    max: int = 1024

    def __post_init__(self) -> None:
        key = "dataset.output_lengths"
        _require(self.distribution in LENGTH_DISTRIBUTIONS, f"{key}.distribution", self.distribution,
                 ", ".join(LENGTH_DISTRIBUTIONS))
        _require(self.min >= 1, f"{key}.min", self.min, "an integer >= 1")
        _require(self.max >= self.min, f"{key}.max", self.max, f"an integer >= {key}.min ({self.min})")
        _require(self.min <= self.mean <= self.max, f"{key}.mean", self.mean,
                 f"an integer in [{key}.min, {key}.max] = [{self.min}, {self.max}]")
        limit = 1.0 if self.distribution == "uniform" else 3.0
        _require(0 <= self.spread <= limit, f"{key}.spread", self.spread,
                 f"a number in [0, {limit:g}] for {self.distribution}")
