"""``backend.engine_args`` checked against what an engine takes, before it loads: an unknown key (a
typo) fails named as llem's key, with the closest names, instead of deep inside the engine.

Engines whose import is their start-up (vLLM, TensorRT-LLM) have their argument names read from
their installed source with ``ast``, never imported; where too few names are found for llem's
reading to be right, nothing is checked. Not an engine (underscore module).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Collection, Dict, Iterable, Optional, Set

log = logging.getLogger(__name__)

# fewer argument names than this read from an engine's source: our parsing missed, so nothing is checked
MIN_PLAUSIBLE_ARGS = 20


def reject_unknown_args(args: Iterable[str], known: Collection[str], target: str) -> None:
    """Raise ConfigError for the first ``backend.engine_args`` key that is not in ``known`` (the argument
    names ``target`` accepts), with the closest names: a typo then fails before load, named as llem's key,
    instead of deep inside the engine with the engine's own message."""
    from llem.support.errors import ConfigError

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
