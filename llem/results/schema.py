"""What a column is: its name (unit in the name), Arrow type, nullability and one-line meaning.

A column is declared once, as a field of a dataclass: the field's annotation gives the type
(``Optional[...]`` makes it nullable), ``col(...)`` its meaning and how the aggregate treats it.
The result parts (:mod:`llem.results.row`), the request and time-series rows
(:mod:`llem.results.tables`), the config schema (``cfg.*``) and each engine's resolved settings
(``engine.*``) are all read the same way, so the writer, the aggregate and the column reference
derive from the same declarations.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Arrow type names used by the schema; the writer maps them to pyarrow types.
F64, I64, STR, BOOL = "float64", "int64", "string", "bool"
LIST_F64, LIST_STR = "list<float64>", "list<string>"
JSON = "json"  # stored as string: a JSON document (mappings, lists, values of no fixed type)


def col(meaning: str, *, default: Any = None, summary: bool = False, label: Optional[str] = None,
        fmt: Optional[str] = None, pooled: Tuple[int, ...] = (), factory: Any = None) -> Any:
    """A dataclass field that is a column.

    ``summary``: the aggregate reports its n, mean, std and bootstrap CI across repeats.
    ``label``/``fmt``: shown under that header in the aggregate's printed table.
    ``pooled``: (request columns) percentiles the aggregate pools over all request rows.
    """
    meta = {"meaning": meaning, "summary": summary, "label": label, "fmt": fmt, "pooled": tuple(pooled)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    meaning: str
    summary: bool = False
    label: Optional[str] = None
    fmt: Optional[str] = None
    pooled: Tuple[int, ...] = ()


def _unwrap_optional(hint: Any) -> Tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return hint, False


def type_of(hint: Any) -> Tuple[str, bool]:
    """(schema type, nullable) of a field annotation."""
    hint, nullable = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        return BOOL, nullable
    if hint is int:
        return I64, nullable
    if hint is float:
        return F64, nullable
    if hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return STR, nullable
    if origin in (list, List, tuple, Tuple):
        inner = typing.get_args(hint)[:1]
        if inner and inner[0] is str:
            return LIST_STR, nullable
        if inner and _unwrap_optional(inner[0])[0] in (float, int):
            return LIST_F64, nullable
    return JSON, True  # Any, mappings, nested lists: a JSON document, nullable


def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def columns_of(cls: type, prefix: str = "") -> List[Column]:
    """The columns a dataclass declares, one per field, in field order."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, nullable = type_of(hints[f.name])
        meta = f.metadata
        out.append(Column(prefix + f.name, kind, nullable, meta.get("meaning", ""), meta.get("summary", False),
                          meta.get("label"), meta.get("fmt"), meta.get("pooled", ())))
    return out


def values_of(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Field values of a dataclass instance, by column name (nested objects are not expanded)."""
    return {prefix + f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# --- the config schema as columns (cfg.*) ------------------------------------------------------
# Mappings under these keys are one JSON column, not one column per entry.
OPAQUE_CONFIG_KEYS = ("engine_args", "generate_args", "architecture", "bounds")


def config_columns(node: Any, prefix: str = "cfg.") -> List[Column]:
    """``cfg.*`` columns of a config dataclass (an instance or a class): nested dataclasses are
    flattened with dotted names; a field typed ``Any`` that holds a dataclass (backend, model,
    dataset) is typed by the dataclass it holds."""
    cls = node if isinstance(node, type) else type(node)
    hints = _hints(cls)
    out: List[Column] = []
    for f in dataclasses.fields(cls):
        hint = _unwrap_optional(hints[f.name])[0]
        value = None if isinstance(node, type) else getattr(node, f.name)
        nested = value if dataclasses.is_dataclass(value) else (hint if dataclasses.is_dataclass(hint) else None)
        if nested is not None and f.name not in OPAQUE_CONFIG_KEYS:
            out.extend(config_columns(nested, f"{prefix}{f.name}."))
            continue
        kind, nullable = type_of(hints[f.name])
        if kind in (LIST_STR, LIST_F64):
            kind = JSON  # config lists are stored as JSON, like mappings
        out.append(Column(prefix + f.name, kind, nullable, f"config key {prefix[4:]}{f.name}"))
    return out


def config_values(obj: Any, prefix: str = "cfg.") -> Dict[str, Any]:
    """``cfg.*`` values of a config dataclass instance (the same names as :func:`config_columns`)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name not in OPAQUE_CONFIG_KEYS:
            out.update(config_values(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def plain(value: Any) -> Any:
    """``value`` as plain data: enums as their values, dataclasses as dicts, tuples as lists, nested too."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def storable(column: Column, value: Any) -> Any:
    """``value`` in the form the column's Arrow type takes (enums as their values, JSON as text)."""
    value = plain(value)
    if value is None:
        return None
    if column.type == JSON:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return value


# --- files written by older versions of llem -------------------------------------------------
# Old column name → its name now (same values): memory columns said _mb but were MiB.
RENAMED = {
    "gpu_memory_allocated_peak_mb": "gpu_memory_allocated_peak_mib",
    "gpu_memory_used_peak_mb": "gpu_memory_used_peak_mib",
    "cpu_rss_peak_mb": "cpu_rss_peak_mib",
    "env.gpu_memory_total_mb": "env.gpu_memory_total_mib",
    "memory_used_mb": "memory_used_mib",
    "rss_mb": "rss_mib",
}
