"""The Engine contract: what llem needs from an inference engine, and nothing more.

An engine is one module in ``llem.backends`` that defines ``ENGINE`` (an :class:`Engine`
subclass) whose ``config_class`` is its dataclass of keys. Heavy libraries are imported
inside the methods, never at module level, so composing a config costs nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

from llem.config import IN_PROCESS_BATCH, BackendConfig, Config
from llem.workload.records import Progress, Request, RequestResult


@dataclass
class EngineInfo:
    """Facts about the loaded engine that go into results.

    ``versions`` become ``engine.<package>_version`` columns; ``resolved`` is the engine's own
    dataclass of resolved settings, one ``engine.<field>`` column per field, typed by its annotation
    (a field's ``metadata["meaning"]`` is its line in the column reference).
    """

    versions: Dict[str, str] = field(default_factory=dict)
    resolved: Any = None  # a dataclass instance, or None
    num_parameters: Optional[int] = None
    weight_bytes: Optional[int] = None
    weight_precision: Optional[str] = None  # as stored: float16, bfloat16, int8, nf4, fp8 …
    compute_precision: Optional[str] = None  # what the matmuls run in


@dataclass
class WorkCounts:
    """Token positions the last ``generate`` computed (padding included) against those requested."""

    tokens_computed: int
    tokens_requested: int


@dataclass
class CompileCache:
    """Where an engine keeps what it compiles, under llem's ``cache_dir`` (so it outlives the job's
    process and later jobs of a sweep load it instead of compiling again)."""

    env: Dict[str, str] = field(default_factory=dict)  # variables pointing its caches there (one already set is kept)
    artifacts: List[str] = field(default_factory=list)  # absolute globs: a file new or changed during load = compiled


@dataclass
class ServerLaunch:
    """How to start an engine's own OpenAI-compatible server (``server=launch``) and talk to it."""

    argv: List[str]  # the command, with the host and port already in it
    env: Dict[str, str] = field(default_factory=dict)  # set on top of the job's environment
    prompt: str = "token_ids"  # what its /v1/completions takes: token_ids, or text only
    id_words: bool = False  # its tokenizer is llem's id-word one (random weights): text prompts are exact
    health_path: str = "/health"
    max_in_flight: Optional[int] = None  # the sequences it runs at once, where known (batch, or its default)
    max_in_flight_null_reason: Optional[str] = None  # why max_in_flight is None
    in_flight_flag: Optional[str] = None  # its flag for the sequences in flight: one in server.args wins
    warnings: List[str] = field(default_factory=list)  # what the server does not take of the job's settings


class Serving:
    """The serving part of an engine, for one config: how its own OpenAI-compatible server is started
    (``server=launch``) and what a completion request to any server needs (launch or external). It is made
    from the config alone (:meth:`Engine.serving`): the job's parent and the HTTP client never build the
    engine. The defaults: no server of its own; requests ask for exactly ``output_len`` tokens."""

    apis: ClassVar[Tuple[str, ...]] = ("completions",)  # the server.api values its own server serves

    def __init__(self, config: Config, device: str) -> None:
        self.config = config
        self.backend = config.backend
        self.device = device  # "cpu" or "cuda"
        self.name = config.backend.name

    def check(self) -> None:
        """Before anything is written or started: raise EngineUnavailable where this engine's server cannot
        run here (a missing package), cheaply."""

    def served_model(self, root: Path) -> Optional[Path]:
        """A model directory the server can load (random weights: written under ``root`` once), or None
        to serve ``model.hf_id``. Runs in the job's parent, which never opens a CUDA context."""
        return None

    def command(self, model_dir: Optional[Path], host: str, port: int) -> ServerLaunch:
        """The engine's own OpenAI-compatible server for this config; ``model_dir`` is what
        :meth:`served_model` prepared. Raise EngineUnavailable where the engine has none."""
        from llem.support.errors import EngineUnavailable

        raise EngineUnavailable(f"backend={self.name} has no OpenAI-compatible server in llem: use server=none")

    def request_extras(self, output_len: int) -> Dict[str, Any]:
        """Keys this engine's server needs in a completion request to generate exactly ``output_len``
        tokens (EOS ignored)."""
        return {"ignore_eos": True, "min_tokens": output_len}

    def metric_table(self) -> Optional[Any]:
        """The names its server's Prometheus ``/metrics`` gives the load llem reads
        (:class:`llem.backends._metric_names.MetricTable`), or None: a server's names are then chosen by what it
        exposes (server.metrics)."""
        return None


class Engine(ABC):
    """One inference engine behind llem's measurement protocol."""

    name: ClassVar[str]
    config_class: ClassVar[Type[BackendConfig]]
    resolved_class: ClassVar[Optional[type]] = None  # the dataclass EngineInfo.resolved holds (engine.* columns)
    package: ClassVar[Optional[str]] = None  # its distribution: engine_version_inside reads its version in an image
    # engine_args keys that duplicate llem's own keys (rejected, naming the llem key to use)
    reserved_args: ClassVar[Dict[str, str]] = {}
    # What the engine cannot do in llem's own process: None where it can, else why not (a config asking
    # for it is refused before anything loads, with this reason and what to use instead).
    no_arrivals: ClassVar[Optional[str]] = "it submits every request at once"
    no_natural_lengths: ClassVar[Optional[str]] = "it generates the same length for every request"
    no_conversations: ClassVar[Optional[str]] = ("it does not hold a conversation's turn until the turn before it "
                                                 "finished")
    serving_class: ClassVar[Type[Serving]] = Serving  # its server and how to ask it (no server by default)

    def __init__(self, config: Config, device: str) -> None:
        self.config = config
        self.backend = config.backend
        self.device = device  # "cpu" or "cuda"
        self.build_for: Optional[int] = None  # set before load: a larger capacity to build for (later jobs' batch)

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Check engine-specific settings without importing the engine (raises ConfigError)."""
        from llem.support.errors import ConfigError

        for key in config.backend.engine_args:
            if key in cls.reserved_args:
                raise ConfigError(
                    f"backend.engine_args.{key} duplicates llem's own key: use {cls.reserved_args[key]} instead"
                )
        served = cls.serving_class.apis
        if config.server.mode == "launch" and config.server.api not in served:
            raise ConfigError(f"server.api={config.server.api} is invalid with backend={cls.name} and server=launch: "
                              f"allowed {', '.join(served)} (what its own server serves); or server=external")
        if config.server.mode != "none":
            return  # the server does the serving: arrivals and lengths are the client's
        server = "server=launch (its own OpenAI-compatible server)"
        if config.load.timed and cls.no_arrivals:
            asked = (f"load.trace={config.load.trace!r}" if config.load.trace is not None else
                     f"load.request_rate={config.load.request_rate:g}")
            raise ConfigError(f"{asked} is not honoured by backend={cls.name} in-process: {cls.no_arrivals}. Use "
                              f"{server}, or load.request_rate=inf without load.trace")
        if config.load.max_concurrency is not None and cls.no_arrivals:
            raise ConfigError(f"load.max_concurrency is not honoured by backend={cls.name} in-process: "
                              f"{cls.no_arrivals}; batch sets its concurrency. Use {server}")
        if config.output_len is None and cls.no_natural_lengths:
            raise ConfigError(f"output_len=null is not honoured by backend={cls.name} in-process: "
                              f"{cls.no_natural_lengths}. Use {server}, or a fixed output_len")
        if config.dataset.name == "conversations" and cls.no_conversations:
            raise ConfigError(f"dataset=conversations is not honoured by backend={cls.name} in-process: "
                              f"{cls.no_conversations}. Use {server}")

    @classmethod
    def serving(cls, config: Config, device: str) -> Serving:
        """The serving part for this config (:class:`Serving`), without building the engine."""
        return cls.serving_class(config, device)

    @classmethod
    def gpus_required(cls, backend: Any) -> int:
        """How many of the visible GPUs one job uses, from its backend config (typed or a DictConfig:
        launchers ask before the config is typed, to size a SLURM task)."""
        return 1

    @classmethod
    def build_key(cls, config: Config) -> Optional[str]:
        """What a loaded engine depends on, as text (:func:`build_text`): a later job of a sweep with the same key
        may measure on the engine an earlier job loaded, after :meth:`reconfigure` (``reuse_engine``; asked only
        of jobs whose engine runs in llem's own processes, never behind a server). None, the default: this engine
        is loaded afresh for every job."""
        return None

    @classmethod
    def build_capacity(cls, config: Config) -> Optional[int]:
        """The sequences in flight a build for this config must hold; a build for more serves it as well (the
        job caps what it keeps in flight at its own ``batch``). None: the build does not depend on it."""
        return None

    def reconfigure(self, config: Config) -> None:
        """Take the next job's config on this loaded engine (the same :meth:`build_key`): what differs is what
        the engine reads at run time (batch, requests, lengths, arrivals)."""
        self.config = config
        self.backend = config.backend

    def check(self) -> None:
        """Before loading: raise EngineUnavailable/DeviceError if this engine cannot run here."""

    def compile_cache(self, root: Path) -> CompileCache:
        """This job's compile caches under ``root`` (the environment, as already set, wins); nothing by
        default: an engine that compiles nothing has none."""
        return CompileCache()

    @classmethod
    def preload(cls) -> None:
        """Import the engine's libraries, touching no device (no CUDA context, no GPU memory). The measurement
        process runs it while its parent meters the device-idle floor, so the import overlaps that floor
        (``engine_import_s``); nothing by default, and :meth:`load` imports whatever is still missing."""

    @abstractmethod
    def load(self) -> None:
        """Build the model and everything generate needs (timed and metered as the load phase)."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        """Generate exactly ``output_len`` tokens for every request (None: each request's own
        ``output_len``), each submitted at its ``arrival_s`` (None: at once); one result per request."""

    def synchronize(self) -> None:
        """Wait until all queued device work has finished (measurement window edges)."""

    def reset_memory_peak(self) -> None:
        """Start a new peak-memory interval."""

    def memory_peak_mib(self) -> Optional[float]:
        """Peak device memory the engine allocated since the last reset, if it can tell."""
        return None

    def sequences_in_flight(self) -> int:
        """Sequences the engine holds at once when saturated (``batch``, times replicas if any):
        warmup sizes itself by it, and the steady-state window starts when it is reached. A server whose
        own default is unknown counts as ``load.max_concurrency`` (the most the client sends at once), else
        as IN_PROCESS_BATCH: a count to size the window by, not a claim about the server."""
        return (self.config.batch or self.max_in_flight()[0] or self.config.load.max_concurrency
                or IN_PROCESS_BATCH)

    def max_in_flight(self) -> Tuple[Optional[int], Optional[str]]:
        """The sequences one engine runs at once as it runs (``batch``), or None and why it is unknown."""
        if self.config.batch is None:
            return None, "batch is null and the engine's own default is unknown to llem"
        return self.config.batch, None

    def work_counts(self) -> Optional[WorkCounts]:
        """Work the last ``generate`` did beyond the requested tokens (e.g. padding), if the engine can tell."""
        return None

    def prefix_cache(self) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
        """Prompt tokens the last ``generate`` looked up in the engine's prefix cache and found there (queried,
        hit), as the engine counts them; or None and why not."""
        return None, f"backend={self.name} does not report its prefix cache to llem"

    def device_uuids(self) -> Optional[List[str]]:
        """UUIDs of the GPUs the engine runs on, as the engine sees them (cross-checks NVML)."""
        return None

    def info(self) -> EngineInfo:
        return EngineInfo()

    def close(self) -> None:
        """Release the model and device memory."""


def build_text(**parts: Any) -> str:
    """A build key: the parts as sorted JSON (dataclasses as dicts, anything else as text)."""
    import dataclasses
    import json

    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    return json.dumps({k: plain(v) for k, v in parts.items()}, sort_keys=True, default=str)


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (an engine's ``check`` stays cheap;
    the import is start-up, timed in ``load``). A module already in ``sys.modules`` counts."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False
