"""The Engine contract: what llem needs from an inference engine, and nothing more.

An engine is one module in ``llem.backends`` that defines ``ENGINE`` (an :class:`Engine`
subclass) whose ``config_class`` is its dataclass of keys. Heavy libraries are imported
inside the methods, never at module level, so composing a config costs nothing.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import logging
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Collection, Dict, Iterable, List, Optional, Sequence, Set, Type

from llem.config import BackendConfig, Config
from llem.records import Progress, Request, RequestResult

log = logging.getLogger(__name__)

# fewer argument names than this read from an engine's source: our parsing missed, so nothing is checked
MIN_PLAUSIBLE_ARGS = 20


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


class Engine(ABC):
    """One inference engine behind llem's measurement protocol."""

    name: ClassVar[str]
    config_class: ClassVar[Type[BackendConfig]]
    resolved_class: ClassVar[Optional[type]] = None  # the dataclass EngineInfo.resolved holds (engine.* columns)
    # engine_args keys that duplicate llem's own keys (rejected, naming the llem key to use)
    reserved_args: ClassVar[Dict[str, str]] = {}

    def __init__(self, config: Config, device: str) -> None:
        self.config = config
        self.backend = config.backend
        self.device = device  # "cpu" or "cuda"

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Check engine-specific settings without importing the engine (raises ConfigError)."""
        from llem.errors import ConfigError

        for key in config.backend.engine_args:
            if key in cls.reserved_args:
                raise ConfigError(
                    f"backend.engine_args.{key} duplicates llem's own key: use {cls.reserved_args[key]} instead"
                )

    @classmethod
    def gpus_required(cls, backend: Any) -> int:
        """How many of the visible GPUs one job uses, from its backend config (typed or a DictConfig:
        launchers ask before the config is typed, to size a SLURM task)."""
        return 1

    def check(self) -> None:
        """Before loading: raise EngineUnavailable/DeviceError if this engine cannot run here."""

    @abstractmethod
    def load(self) -> None:
        """Build the model and everything generate needs (timed and metered as the load phase)."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], output_len: int, progress: Progress) -> List[RequestResult]:
        """Generate exactly ``output_len`` tokens for every request; return one result per request."""

    def synchronize(self) -> None:
        """Wait until all queued device work has finished (measurement window edges)."""

    def reset_memory_peak(self) -> None:
        """Start a new peak-memory interval."""

    def memory_peak_mib(self) -> Optional[float]:
        """Peak device memory the engine allocated since the last reset, if it can tell."""
        return None

    def sequences_in_flight(self) -> int:
        """Sequences the engine holds at once when saturated (``batch``, times replicas if any):
        warmup sizes itself by it, and the steady-state window starts when it is reached."""
        return self.config.batch

    def work_counts(self) -> Optional[WorkCounts]:
        """Work the last ``generate`` did beyond the requested tokens (e.g. padding), if the engine can tell."""
        return None

    def device_uuids(self) -> Optional[List[str]]:
        """UUIDs of the GPUs the engine runs on, as the engine sees them (cross-checks NVML)."""
        return None

    def info(self) -> EngineInfo:
        return EngineInfo()

    def close(self) -> None:
        """Release the model and device memory."""


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (an engine's ``check`` stays cheap;
    the import is start-up, timed in ``load``). A module already in ``sys.modules`` counts."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def reject_unknown_args(args: Iterable[str], known: Collection[str], target: str) -> None:
    """Raise ConfigError for the first ``backend.engine_args`` key that is not in ``known`` (the argument
    names ``target`` accepts), with the closest names: a typo then fails before load, named as llem's key,
    instead of deep inside the engine with the engine's own message."""
    from llem.errors import ConfigError

    for key in args:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"backend.engine_args.{key} is not an argument of {target}: {hint}"
                              f"allowed: one of the {len(known)} names it takes")


def check_engine_args(args: Collection[str], known: Collection[str], target: str, source: Any) -> None:
    """:func:`reject_unknown_args` with argument names read from an engine's ``source`` without importing
    it; where too few were found to be its real set, nothing is checked (debug log): llem's reading of
    another project's source never blocks a run."""
    if len(known) < MIN_PLAUSIBLE_ARGS:
        log.debug("arguments of %s not found in %s: backend.engine_args left for the engine to check", target, source)
        return
    reject_unknown_args(args, known, target)


def package_dir(package: str) -> Optional[Path]:
    """The directory of an installed package's source, found without importing it (as ``installed``)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def source_classes(path: Path) -> Dict[str, ast.ClassDef]:
    """The top-level classes of a Python source file, by name, parsed and never imported (an engine's
    import is its start-up); empty where the file cannot be read or parsed."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        log.debug("%s not parsed: %s", path, exc)
        return {}
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def class_fields(classes: Dict[str, ast.ClassDef], name: str, fieldless: Collection[str] = ()) -> Optional[Set[str]]:
    """The fields (annotated names, ClassVar left out) of class ``name`` and of the classes it derives from
    in the same module; None where it is missing or derives from a class defined elsewhere, not one of
    ``fieldless`` (known to add no fields): its set would be incomplete, and a valid key rejected."""
    cls = classes.get(name)
    if cls is None:
        return None
    names = {node.target.id for node in cls.body
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
             and "ClassVar" not in ast.unparse(node.annotation)}
    for base in (ast.unparse(b) for b in cls.bases):
        if base in fieldless:
            continue
        inherited = class_fields(classes, base, fieldless) if base != name else None
        if inherited is None:
            log.debug("%s derives from %s, not read: its fields are not known", name, base)
            return None
        names |= inherited
    return names
