"""The configuration schema: every llem key is defined here, once, as a dataclass field.

Values and presets live in ``conf/*.yaml``; Hydra composes them onto this schema, so a
wrong type or an unknown key is rejected at compose time. Range checks that a type cannot
express live in ``__post_init__`` and run when :func:`to_config` builds the typed object.
Engine-specific keys live in each engine's own dataclass (a subclass of
:class:`BackendConfig`, registered by its module under ``llem.backends``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from llem.config import workload_checks
from llem.config.dataset import (
    BuiltinDatasetConfig,
    ConversationsDatasetConfig,
    DatasetConfig,
    FileDatasetConfig,
    HFDatasetConfig,
    RandomDatasetConfig,
    SharedPrefixDatasetConfig,
    TextDatasetConfig,
)
from llem.config.load import LoadConfig, OutputLengthsConfig, ServerConfig
from llem.config.measure import AttributionRule, BaselineConfig, BaselineKind, EnergyConfig, MeasureConfig, WarmupConfig
from llem.config.runtime import RuntimeConfig, image_for, image_key, is_image_ref
from llem.results.schema import plain
from llem.support.errors import ConfigError
from llem.support.errors import require as _require

__all__ = ["AttributionRule", "BaselineConfig", "BaselineKind", "BuiltinDatasetConfig", "ConversationsDatasetConfig",
           "DatasetConfig", "EnergyConfig",
           "FileDatasetConfig", "HFDatasetConfig", "LoadConfig", "MeasureConfig", "OutputLengthsConfig",
           "RandomDatasetConfig", "RuntimeConfig", "ServerConfig", "SharedPrefixDatasetConfig", "TextDatasetConfig",
           "WarmupConfig"]


class DType(Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Weights(Enum):
    random = "random"
    pretrained = "pretrained"


class Device(Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


# model.architecture sizes that must be whole and positive (a model of 0 layers or heads builds nothing real)
ARCHITECTURE_SIZES = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                      "hidden_size", "intermediate_size")


@dataclass
class ModelConfig:
    """What is measured. ``architecture`` lets ``weights=random`` build the model offline."""

    name: str = MISSING
    hf_id: Optional[str] = None
    weights: Weights = Weights.random
    dtype: DType = DType.float32
    revision: Optional[str] = None
    tokenizer: Optional[str] = None  # HF id or local dir (default: hf_id); bytes: built-in byte-level, offline
    trust_remote_code: bool = False
    architecture: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights == Weights.pretrained:
            _require(bool(self.hf_id), "model.hf_id", self.hf_id, "an HF model id when model.weights=pretrained")
        else:
            _require(
                "model_type" in self.architecture,
                "model.architecture",
                dict(self.architecture),
                "a mapping with at least model_type when model.weights=random",
            )
        for key in ARCHITECTURE_SIZES:
            value = self.architecture.get(key)
            if value is not None:
                _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                         f"model.architecture.{key}", value, "an integer >= 1")



@dataclass
class BackendConfig:
    """Keys every engine shares. Engines subclass this with their own keys.

    ``engine_args`` is passed to the engine untouched, for settings llem does not model.
    """

    name: str = MISSING
    engine_args: Dict[str, Any] = field(default_factory=dict)
    image: Optional[str] = None  # llem's image of this engine: the measurement process runs in it (runtime=docker)
    server_image: Optional[str] = None  # the engine's own server image: server=launch runs in it (runtime=docker)


@dataclass
class DecodingConfig:
    """How tokens are picked, the same on every engine. Greedy by default (temperature 0); every
    engine generates exactly output_len tokens either way (EOS is ignored)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k

    def __post_init__(self) -> None:
        _require(self.temperature >= 0, "decoding.temperature", self.temperature, "a number >= 0 (0: greedy)")
        _require(0 < self.top_p <= 1, "decoding.top_p", self.top_p, "a number in (0, 1]")
        _require(self.top_k >= 0, "decoding.top_k", self.top_k, "an integer >= 0 (0: off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def parse_bound(bound: Any) -> Tuple[str, float]:
    """An ``objective.bounds`` value as (operator, limit): ``"<=500"`` → ("<=", 500.0); ValueError when it is
    not ``<=NUMBER`` or ``>=NUMBER``."""
    text = str(bound).strip()
    if text[:2] not in ("<=", ">="):
        raise ValueError(f"{bound!r} is not '<=NUMBER' or '>=NUMBER'")
    return text[:2], float(text[2:])


def breaks_bound(value: Optional[float], op: str, limit: float) -> bool:
    """Whether ``value`` breaks the bound (an unmeasured value, None, meets none)."""
    return value is None or (value > limit if op == "<=" else value < limit)


@dataclass
class ObjectiveConfig:
    """What a job returns to a Hydra sweeper (e.g. Optuna): a result column, optionally bounded.

    ``bounds`` maps result columns to ``"<=500"`` / ``">=1000"``; a job that breaks a bound, fails,
    or has no value for ``metric`` returns the worst value (inf for minimize, -inf for maximize).
    """

    metric: str = "j_per_output_token"
    direction: str = "minimize"
    bounds: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.direction in ("minimize", "maximize"), "objective.direction", self.direction,
                 "minimize, maximize")
        for column, bound in self.bounds.items():
            try:
                parse_bound(bound)
            except ValueError:
                _require(False, f"objective.bounds.{column}", bound, "'<=NUMBER' or '>=NUMBER'")


SWEEP_ORDERS = ("grid", "interleaved", "grouped", "shuffled")


@dataclass
class SweepConfig:
    """The order a sweep runs its jobs in (applied by llem's sweeper, ``hydra/sweeper=serial``; docs/sweeps.md).

    ``grid``: Hydra's order (the last swept key varies fastest). The others see a sweep as *cycles* (the values of
    ``repeat``, in the order given) of *configurations* (a job's overrides without ``repeat``):
    ``interleaved`` runs every configuration once per cycle, ``grouped`` all cycles of a configuration together,
    ``shuffled`` every configuration once per cycle in an order drawn per cycle from ``seed``."""

    order: str = "grid"
    seed: int = 0  # seeds shuffled's permutations: the same seed gives the same order (a rerun resumes alike)

    def __post_init__(self) -> None:
        _require(self.order in SWEEP_ORDERS, "sweep.order", self.order, ", ".join(SWEEP_ORDERS))
        _require(0 <= self.seed <= SEED_MAX, "sweep.seed", self.seed, f"an integer in [0, {SEED_MAX}]")


# Keys that do not change what is measured: excluded from config_hash (dotted: a nested key).
HASH_EXCLUDED_KEYS = ("repeat", "isolate", "reuse_engine", "progress", "objective", "dry_run", "cache_dir",
                      "sweep", "cold_start",
                      "server.host", "server.port", "server.startup_timeout_s", "server.reuse", "server.api_key_env",
                      "server.metrics")
# Sequences an in-process engine holds at once when ``batch`` is null (a launched server runs at its own default).
IN_PROCESS_BATCH = 4
INF_ALLOWED = ("load.request_rate",)  # floats that may be inf (all at once); every other one must be finite
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # engines seed numpy's generators, which take 32 bits


@dataclass
class Config:
    """One measured experiment."""

    backend: Any = MISSING
    model: Any = MISSING
    dataset: Any = MISSING
    batch: Optional[int] = None  # sequences in flight; null: the engine's own default (in-process: IN_PROCESS_BATCH)
    input_len: int = 128  # tokens per prompt, for synthetic prompts (and truncation of real ones)
    output_len: Optional[int] = 128  # tokens per request, exactly; null: each its own (dataset.output_lengths)
    seed: int = 0
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    repeat: int = 0  # a label swept to repeat a configuration; not part of config_hash
    device: Device = Device.auto
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    cooldown_s: float = 0.0  # wait before the job's baseline (thermal gap between jobs)
    isolate: bool = True  # measure in a fresh child process (spawn); false: in-process, for debugging
    reuse_engine: bool = True  # consecutive jobs of a sweep whose engine build is the same measure on one kept engine
    cold_start: bool = False  # start from nothing an earlier job left: no kept engine, server or container, a new floor
    sweep: SweepConfig = field(default_factory=SweepConfig)
    progress: bool = True  # progress bar while generating (shown only on a terminal)
    dry_run: bool = False  # validate every job and say what would run or be skipped; run nothing
    cache_dir: str = "~/.cache/llem"  # compile caches, engines, model dirs: shared by jobs and sweeps, never measured

    def __post_init__(self) -> None:
        _require(self.batch is None or self.batch >= 1, "batch", self.batch,
                 "an integer >= 1, or null (the engine's own default)")
        if self.batch is None and getattr(self.server, "mode", "none") == "none":
            self.batch = IN_PROCESS_BATCH  # in llem's process the engine has no default of its own to keep
        _require(self.input_len >= 1, "input_len", self.input_len, "an integer >= 1")
        _require(self.output_len is None or self.output_len >= 1, "output_len", self.output_len,
                 "an integer >= 1, or null (each request its own length: dataset.output_lengths)")
        _require(self.repeat >= 0, "repeat", self.repeat, "an integer >= 0")
        _require(0 <= self.seed <= SEED_MAX, "seed", self.seed, f"an integer in [0, {SEED_MAX}]")
        _require(self.cooldown_s >= 0, "cooldown_s", self.cooldown_s, "a number of seconds >= 0")
        _require(isinstance(self.backend, BackendConfig), "backend", self.backend, "a backend group (backend=...)")
        _require(isinstance(self.model, ModelConfig), "model", self.model, "a model group (model=...)")
        _require(isinstance(self.dataset, DatasetConfig), "dataset", self.dataset, "a dataset group (dataset=...)")
        self._check_runtime()
        workload_checks.check(self)

    def _check_runtime(self) -> None:
        """The engine's images are references, and a container runtime has what it needs: an image for the
        server mode, a measurement process of its own (isolate), a server that it starts (not external)."""
        for key in ("image", "server_image"):
            value = getattr(self.backend, key, None)
            _require(value is None or is_image_ref(value), f"backend.{key}", value,
                     "null or an image reference such as name:tag or registry/name@sha256:…")
        runtime = self.runtime
        if not runtime.in_container:
            return
        mode = getattr(self.server, "mode", "none")
        _require(mode != "external", "runtime.name", runtime.name,
                 "host with server=external (an external server runs where it was started)")
        _require(self.isolate, "isolate", self.isolate, f"true with runtime={runtime.name} (the measurement process "
                 "is the container's)")
        _require(image_for(runtime, self.backend, mode) is not None, image_key(runtime, mode), None,
                 f"an image reference with runtime={runtime.name}: backend={self.backend.name} sets none; set "
                 "runtime.image=<name:tag>")

    @property
    def output_len_max(self) -> int:
        """The longest output a request can ask for: output_len, or the natural lengths' maximum."""
        return self.output_len if self.output_len is not None else self.dataset.output_lengths.max


def register_configs() -> None:
    """Register llem's own schema in Hydra's ConfigStore (``llem.backends.register_all`` adds every
    engine's, and calls this first)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="dataset", name="base_random", node=RandomDatasetConfig)
    cs.store(group="dataset", name="base_shared_prefix", node=SharedPrefixDatasetConfig)
    cs.store(group="dataset", name="base_conversations", node=ConversationsDatasetConfig)
    cs.store(group="dataset", name="base_file", node=FileDatasetConfig)
    cs.store(group="dataset", name="base_builtin", node=BuiltinDatasetConfig)
    cs.store(group="dataset", name="base_hf", node=HFDatasetConfig)


def conf_dir() -> Path:
    """The directory holding config.yaml: inside the installed package, or the source tree's ``conf/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here.parent.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("llem's conf/ directory was not found next to the package")


def _unknown_keys(node: Any, obj: Any, prefix: str = "") -> None:
    """Reject keys the schema does not define (Hydra's ``+key=value`` can add them)."""
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is None or not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if key not in fields:
            allowed = ", ".join(f for f in fields if not f.startswith("_"))
            where = f"under {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(f"{prefix}{key} is not a llem key: allowed keys {where} are {allowed}")
        value = getattr(obj, key)
        if hasattr(value, "__dataclass_fields__"):
            _unknown_keys(node[key], value, f"{prefix}{key}.")


def to_config(cfg: DictConfig) -> Config:
    """Build the typed config (running every range check); raise ConfigError naming the key."""
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf validation errors carry the key and the allowed values
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(str(exc).strip()) from None
    if not isinstance(obj, Config):
        raise ConfigError("the primary config is not llem's schema (defaults must start with base_config)")
    _unknown_keys(cfg, obj)
    _storable(obj)
    return obj


def _storable(obj: Any, prefix: str = "") -> None:
    """Every number must be one a result file can hold: integers within 64 bits, floats finite
    (a value such as seed=1e20 or cooldown_s=inf is rejected here, not at the write)."""
    import dataclasses
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _storable(value, key + ".")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            _require(-INT64_MAX - 1 <= value <= INT64_MAX, key, value, "an integer that fits in 64 bits")
        elif isinstance(value, float):
            _require(math.isfinite(value) or (key in INF_ALLOWED and value == math.inf), key, value,
                     "a finite number" + (" or inf" if key in INF_ALLOWED else ""))


def to_dict(config: Config) -> Dict[str, Any]:
    """The config as plain nested dicts (enums as their values)."""
    return plain(config)


def config_hash(config: Config) -> str:
    """A stable hash of the measured settings (not repeat, not debugging switches)."""
    tree = to_dict(config)
    for key in HASH_EXCLUDED_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    if tree.get("server", {}).get("mode") == "none":  # in-process: the server's settings measure nothing
        tree["server"] = {"mode": "none"}
    if tree.get("server", {}).get("api") == "completions":  # the default: hashes from before server.api stay valid
        tree["server"].pop("api")
    backend = tree.get("backend", {})
    backend.pop("image", None)
    backend.pop("server_image", None)
    runtime = config.runtime
    if runtime.in_container:  # the image this job runs in, however it was named; on the host: nothing
        tree["runtime"] = {"name": runtime.name, "args": list(runtime.args),
                           "image": image_for(runtime, config.backend, config.server.mode)}
    else:
        tree.pop("runtime", None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
