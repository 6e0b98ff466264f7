"""The load part of the schema: how requests arrive (``load``), what serves them (``server``), and the
natural output lengths used when ``output_len`` is null (``dataset.output_lengths``). Re-exported by
:mod:`llem.config`, the schema's entry point; each key is defined once, here."""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from llem.support.errors import ConfigError
from llem.support.errors import require as _require

SERVER_MODES = ("none", "launch", "external")
PROMPT_KINDS = ("auto", "token_ids", "text")
METRICS_MODES = ("auto", "on", "off")  # server.metrics: scrape the server's Prometheus /metrics through the window
# The OpenAI APIs the client speaks (llem.serving.apis): completions takes token ids or text, chat text only.
SERVER_APIS = ("completions", "chat")
TEXT_ONLY_APIS = ("chat",)
LENGTH_DISTRIBUTIONS = ("lognormal", "uniform")
# Arrival processes a clock can keep: a mean gap between 1 µs and 1000 s, and a gamma shape whose gaps neither
# collapse to ~0 (shape 1e-300 puts every arrival at t0) nor lose all spread.
RATE_RANGE = (1e-3, 1e6)  # requests per second, or inf
BURSTINESS_RANGE = (1e-2, 1e2)
# The request fields llem sets itself (the request, its length, streaming, decoding, the engine's exact-length
# keys): server.extra_body may add to them, never replace them, or the measurement would not be of what it says.
OWN_BODY_KEYS = ("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "min_tokens", "stream",
                 "stream_options", "n", "best_of", "echo", "ignore_eos", "temperature", "top_p", "top_k", "seed",
                 "generation_config", "logprobs", "stop", "suffix")
# server.* keys only some server modes use (the others would silently ignore them); mode none uses none.
LAUNCH_KEYS = ("host", "port", "startup_timeout_s", "args", "reuse")
EXTERNAL_KEYS = ("url", "api_key_env")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host(host: str) -> bool:
    """Whether ``host`` is an IP address (v4, or v6 with or without brackets) or a valid DNS host name."""
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        return True
    except ValueError:
        pass
    if not host or len(host) > 253 or re.fullmatch(r"[0-9.]+", host):
        return False  # all digits and dots is an IPv4 address or nothing (999.1.1.1)
    return all(_HOST_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def check_url(url: object, key: str = "server.url") -> None:
    """An http(s) base URL that parses, names a valid host and port, and carries no credentials (the
    error never repeats credentials: they would reach the console and the failed row)."""
    text = str(url or "")
    allowed = "the server's base URL, e.g. http://127.0.0.1:8000"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        parts, port = None, exc
    if parts is not None and (parts.username is not None or parts.password is not None or "@" in parts.netloc):
        raise ConfigError(f"{key} holds credentials (user:password@): not allowed in a URL, where they would be "
                          "written to logs and results; put the key in an environment variable and name it in "
                          "server.api_key_env (sent as Authorization: Bearer)")
    _require(parts is not None and not isinstance(port, ValueError), key, url, f"{allowed} (it does not parse: {port})")
    _require(parts.scheme in ("http", "https") and bool(parts.netloc), key, url, f"{allowed} (http:// or https://)")
    _require(not any(c.isspace() for c in text), key, url, f"{allowed}, with no spaces")
    _require(is_host(parts.hostname or ""), key, url, f"{allowed}: {parts.hostname!r} is not an IP address or "
             "host name")
    _require(not parts.query and not parts.fragment, key, url, f"{allowed}, with no query or fragment")


@dataclass
class LoadConfig:
    """The arrival process. ``request_rate`` requests per second (``inf``: every request at once, the
    throughput ceiling); inter-arrival gaps are gamma-distributed with shape ``burstiness`` (1: Poisson,
    < 1 burstier, > 1 steadier) and mean 1/rate, drawn with ``seed``; ``max_concurrency`` caps the requests
    in flight (null: no cap): an arrival beyond it waits, and the wait is its ``queue_ms``. ``trace`` replays a
    recorded trace instead of drawing arrivals (docs/traces.md): its times, multiplied by ``trace_time_scale``
    (0.5: twice as fast), and its lengths."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: Optional[int] = None
    trace: Optional[str] = None  # a trace file (JSONL or CSV): arrivals and lengths replayed, not drawn
    trace_time_scale: float = 1.0  # the trace's arrival times are multiplied by it

    def __post_init__(self) -> None:
        rate, low, high = self.request_rate, *RATE_RANGE
        _require(rate == math.inf or low <= rate <= high, "load.request_rate", rate,
                 f"a number of requests per second in [{low:g}, {high:g}], or inf (no arrival times)")
        low, high = BURSTINESS_RANGE
        _require(low <= self.burstiness <= high, "load.burstiness", self.burstiness,
                 f"a gamma shape in [{low:g}, {high:g}] (1: Poisson arrivals)")
        if self.max_concurrency is not None:
            _require(self.max_concurrency >= 1, "load.max_concurrency", self.max_concurrency,
                     "null (no cap) or an integer >= 1")
        scale = self.trace_time_scale
        _require(isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0, "load.trace_time_scale",
                 scale, "a finite number > 0 (the trace's times are multiplied by it; 0.5: twice as fast)")
        if self.trace is None:
            _require(scale == 1.0, "load.trace_time_scale", scale, "1.0 without load.trace (it scales a trace's times)")
            return
        _require(isinstance(self.trace, str) and self.trace.strip() != "", "load.trace", self.trace,
                 "null or the path of a trace file (JSONL or CSV, docs/traces.md)")
        for key, default in (("request_rate", math.inf), ("burstiness", 1.0)):
            if getattr(self, key) != default:
                raise ConfigError(f"load.{key}={getattr(self, key)!r} is invalid with load.trace: the trace gives "
                                  f"the arrival times; set one of load.{key} and load.trace, not both")

    @property
    def timed(self) -> bool:
        """Whether requests arrive over time (a finite rate, or a trace) rather than all at once."""
        return self.request_rate != math.inf or self.trace is not None


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
    api: str = "completions"  # completions (/v1/completions) | chat (/v1/chat/completions: one user message)
    prompt: str = "auto"  # auto | token_ids | text: how prompts are sent (auto: token ids where the server takes them)
    args: List[str] = field(default_factory=list)  # launch: extra command-line arguments for the server
    extra_body: Dict[str, Any] = field(default_factory=dict)  # added to every request's JSON (server-specific keys)
    reuse: bool = True  # launch: consecutive jobs that need the same server keep it running
    api_key_env: Optional[str] = None  # external: the NAME of a variable whose value is sent as a Bearer token
    metrics: str = "auto"  # scrape its Prometheus /metrics: auto (where it has them) | on (required) | off

    def __post_init__(self) -> None:
        _require(self.mode in SERVER_MODES, "server.mode", self.mode, ", ".join(SERVER_MODES))
        _require(self.api in SERVER_APIS, "server.api", self.api, ", ".join(SERVER_APIS))
        _require(self.prompt in PROMPT_KINDS, "server.prompt", self.prompt, ", ".join(PROMPT_KINDS))
        _require(self.metrics in METRICS_MODES, "server.metrics", self.metrics,
                 "auto (scrape the server's Prometheus /metrics where it has them), on (a server without them fails "
                 "the job's check) or off")
        if self.api in TEXT_ONLY_APIS:
            _require(self.prompt != "token_ids", "server.prompt", self.prompt,
                     f"auto or text with server.api={self.api} (its messages hold text, never token ids)")
        _require(1 <= self.port <= 65535, "server.port", self.port, "a TCP port in [1, 65535]")
        for key in ("startup_timeout_s", "request_timeout_s", "connect_timeout_s", "chunk_timeout_s"):
            value = getattr(self, key)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"server.{key}", value,
                     "a finite number of seconds > 0")
        _require(self.model_name is None or (isinstance(self.model_name, str) and self.model_name.strip() != ""),
                 "server.model_name", self.model_name, "null (the first model /v1/models lists) or a model's name")
        if self.mode == "external":
            check_url(self.url)
        _require(is_host(str(self.host)), "server.host", self.host, "an IP address or a host name, e.g. 127.0.0.1")
        if self.api_key_env is not None:
            _require(bool(ENV_NAME.fullmatch(str(self.api_key_env))), "server.api_key_env", self.api_key_env,
                     "the name of an environment variable (letters, digits, _; not its value)")
        for path, value in _not_json(self.extra_body, "server.extra_body"):
            raise ConfigError(f"{path}={value!r} is invalid: allowed a JSON value (a string, a finite number, "
                              "true, false, null, a list or an object): every request carries it as JSON")
        own = sorted(set(self.extra_body) & set(OWN_BODY_KEYS))
        if own:
            raise ConfigError(f"server.extra_body.{own[0]} is invalid: llem sets {', '.join(own)} itself; "
                              f"server.extra_body may add keys other than {', '.join(OWN_BODY_KEYS)} "
                              "(lengths: output_len; decoding: decoding.*)")
        self._check_mode_keys()

    def _check_mode_keys(self) -> None:
        """A key the chosen mode does not use is refused, not silently ignored."""
        users = {**{k: ("launch",) for k in LAUNCH_KEYS}, **{k: ("external",) for k in EXTERNAL_KEYS}}
        if self.mode == "none":
            users.update({k: ("launch", "external") for k in ("api", "model_name", "prompt", "request_timeout_s",
                                                              "connect_timeout_s", "chunk_timeout_s", "extra_body",
                                                              "metrics")})
        for key, modes in users.items():
            if self.mode not in modes and getattr(self, key) != _default(key):
                raise ConfigError(f"server.{key} is set but server.mode={self.mode} does not use it: only "
                                  f"server={' or server='.join(modes)} does (choose it, or drop server.{key})")


def _default(key: str) -> Any:
    f = ServerConfig.__dataclass_fields__[key]
    return f.default_factory() if f.default_factory is not MISSING_FIELD else f.default


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


def _not_json(value: Any, path: str):
    """The (path, value) of each part of ``value`` that strict JSON cannot carry: NaN and infinities (which
    Python's encoder writes as the non-JSON ``NaN``/``Infinity``), and anything not a JSON type."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _not_json(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _not_json(item, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif not isinstance(value, (str, int, float, bool, type(None))):
        yield path, value


def load_mode(load_config: Any) -> str:
    """How the load was made: ``burst`` (rate inf, no cap: every request due at once), ``closed`` (rate inf
    with ``max_concurrency=N``: N in flight, each next request due as one finishes) or ``open`` (a finite
    rate, or a trace: each request due at its arrival time)."""
    if load_config.timed:
        return "open"
    return "closed" if load_config.max_concurrency is not None else "burst"
