"""Prompts from Hugging Face datasets (the ``datasets`` library, imported only here, only when used).

Where a dataset comes from, in order:

1. ``dataset.path``: a local copy (a ``save_to_disk`` directory, a directory of data files, or
   one data file); the network is never touched.
2. The Hub, when it answers a short probe (so a dead or blocked network costs seconds, not the
   minutes of retries ``datasets`` would spend): ``datasets.load_dataset`` as usual, which
   caches what it downloads.
3. Otherwise (Hub unreachable, or HF_HUB_OFFLINE=1): the dataset's snapshot in the local Hub
   cache, as ``hf download ID --repo-type dataset`` (or an earlier online run) left it; if it
   is not there, a WorkloadError saying how to pre-fetch it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from llem.config import hub
from llem.support.errors import WorkloadError
from llem.support.install import install_hint

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text",
             ".arrow": "arrow"}


@functools.cache
def _probe(base: str, timeout_s: float) -> Optional[str]:
    """None when the Hub answers (any HTTP status); else why not."""
    status, error = hub.head(base, timeout_s)
    if status is not None:
        return None
    return f"no answer from {base} within {timeout_s:g} s" if error.startswith("no answer") else (
        f"{base} unreachable ({error})")


def hub_unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the Hub can be used; else why not (an offline switch is set, or no answer)."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    return _probe(hub.endpoint(), timeout_s)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise WorkloadError("Hugging Face datasets need the datasets library: "
                            f"{install_hint('datasets')}") from None
    datasets.disable_progress_bars()
    return datasets


def _pick_split(loaded: Any, split: str, where: str) -> Any:
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        return loaded  # already one split
    if split not in loaded:
        raise WorkloadError(f"dataset.split={split!r} is not in {where}: its splits are {sorted(loaded)}")
    return loaded[split]


def _load_local(ds: Any, cfg: Any) -> Any:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise WorkloadError(f"dataset.path={cfg.path!r}: no such file or directory")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _pick_split(ds.load_from_disk(str(path)), cfg.split, str(path))
    if path.is_dir():
        return _pick_split(ds.load_dataset(str(path), cfg.subset, data_files=cfg.data_files, split=cfg.split),
                           cfg.split, str(path))
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise WorkloadError(f"dataset.path={cfg.path!r}: a data file must end in one of {sorted(_BUILDERS)}")
    return ds.load_dataset(builder, data_files=str(path), split="train")


def _prefetch_hint(cfg: Any) -> str:
    rev = f" --revision {cfg.revision}" if cfg.revision else ""
    return (f"Pre-fetch it on a machine with network access (same HF_HOME, or copy the cache over): "
            f"`hf download {cfg.hf_id} --repo-type dataset{rev}` (older huggingface_hub: `huggingface-cli download "
            f"{cfg.hf_id} --repo-type dataset{rev}`); runs then read it from the cache, also with "
            f"HF_HUB_OFFLINE=1 (HF_DATASETS_OFFLINE=1). Or save a copy with datasets' save_to_disk and set "
            f"dataset.path to it")


def _load_cached(ds: Any, cfg: Any, why: str) -> Any:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(cfg.hf_id, repo_type="dataset", revision=cfg.revision, local_files_only=True)
    except Exception:
        raise WorkloadError(f"dataset.hf_id={cfg.hf_id!r} is not in the local Hugging Face cache and the Hub cannot "
                            f"be used ({why}). {_prefetch_hint(cfg)}") from None
    log.info("%s: Hub not used (%s); reading the cached snapshot %s", cfg.hf_id, why, folder)
    return _pick_split(ds.load_dataset(folder, cfg.subset, data_files=cfg.data_files, split=cfg.split),
                       cfg.split, f"the cached {cfg.hf_id}")


def load_split(cfg: Any) -> Any:
    """The configured split as a ``datasets.Dataset``, from a local copy, the Hub, or the local cache."""
    ds = _import_datasets()
    try:
        if cfg.path:
            return _load_local(ds, cfg)
        why = hub_unreachable()
        if why is not None:
            return _load_cached(ds, cfg, why)
        return ds.load_dataset(cfg.hf_id, cfg.subset, split=cfg.split, revision=cfg.revision,
                               data_files=cfg.data_files)
    except WorkloadError:
        raise
    except Exception as exc:
        source = f"dataset.path={cfg.path!r}" if cfg.path else f"dataset.hf_id={cfg.hf_id!r}"
        raise WorkloadError(f"{source} could not be loaded ({type(exc).__name__}: {exc})") from None


def _first_human_turn(conversation: Any) -> str:
    for turn in conversation or ():
        if not isinstance(turn, dict):
            continue
        who = str(turn.get("from", turn.get("role", ""))).lower()
        if who in ("human", "user"):
            return str(turn.get("value", turn.get("content")) or "")
    return ""


def record_reference(record: dict, layout: str, column: str) -> Optional[str]:
    """The reference completion of one record, where its layout has one: Alpaca's ``output``, the answer
    that follows ShareGPT's first human turn (``vllm bench serve`` takes its output lengths from it)."""
    if layout == "alpaca":
        value = record.get("output")
        return None if value is None else str(value)
    if layout == "sharegpt":
        turns = [t for t in (record.get(column) or ()) if isinstance(t, dict)]
        for a, b in zip(turns, turns[1:]):
            if str(a.get("from", a.get("role", ""))).lower() in ("human", "user"):
                who = str(b.get("from", b.get("role", ""))).lower()
                return str(b.get("value", b.get("content")) or "") if who in ("gpt", "assistant") else None
    return None


def record_prompt(record: dict, layout: str, column: str) -> str:
    """The prompt text of one record under a layout (see HFDatasetConfig)."""
    if layout == "alpaca":
        extra = str(record.get("input") or "").strip()
        instruction = str(record.get("instruction") or "").strip()
        return f"{instruction}\n\n{extra}" if extra else instruction
    if layout == "sharegpt":
        return _first_human_turn(record.get(column))
    value = record.get(column)
    return "" if value is None else str(value)


def hf_prompts(cfg: Any, seed: int) -> Iterator[Tuple[str, Optional[str]]]:
    """(prompt text, reference completion or None) of the configured dataset, in order or shuffled with
    ``seed``; read lazily."""
    split = load_split(cfg)
    needed = ("instruction",) if cfg.layout == "alpaca" else (cfg.column,)
    missing = [c for c in needed if c not in split.column_names]
    if missing:
        key = "dataset.layout" if cfg.layout == "alpaca" else "dataset.column"
        value = cfg.layout if cfg.layout == "alpaca" else cfg.column
        raise WorkloadError(f"{key}={value!r} needs column(s) {missing}, which the dataset lacks: its columns are "
                            f"{split.column_names}")
    log.info("dataset %s: %d records", cfg.hf_id or cfg.path, len(split))
    if cfg.shuffle:
        import numpy as np

        order = np.random.default_rng(seed).permutation(len(split)).tolist()
    else:
        order = range(len(split))
    return ((record_prompt(split[i], cfg.layout, cfg.column), record_reference(split[i], cfg.layout, cfg.column))
            for i in order)
