"""A sweep job's directory name, from its overrides: readable, short, deterministic.

``batch=8,dtype=bfloat16,hf_id=meta-llama_Llama-3.1-8B``: the ``key=value`` pairs sorted by key,
switches left out; a dotted key shortened to its last part when no other override of the job
ends the same way and it is not a top-level key (``model.dtype`` → ``dtype``, but ``model.name``
stays whole beside ``dataset.name``); characters unsafe in a file name replaced by ``_`` (a ``/``
in a value makes no nested folder). Beyond :data:`MAX_CHARS` the name is cut after the last pair
that fits and ends ``,<N>more-<hash>``: how many pairs were cut and a hash of all the overrides,
so names stay unique. A secret value typed into an override, or credentials in a URL, appear as
the variable's name (``<HF_TOKEN>`` → ``_HF_TOKEN_``). The same overrides always give the same name
(a rerun resumes into the same dirs); the full overrides stay in the job's ``.hydra/overrides.yaml``
and its row's ``cfg.*``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Iterable, List, Tuple

MAX_CHARS = 100
SUBDIR = "${llem_job_dir:}"  # hydra.sweep.subdir in conf/config.yaml
UNSAFE = re.compile(r"[^A-Za-z0-9._=,+~@%-]+")
EMPTY = "defaults"  # a sweep job with no overrides


def job_dirname(overrides: Iterable[str], exclude_keys: Iterable[str] = ()) -> str:
    """The directory name of the job with these Hydra overrides (``key=value`` strings)."""
    from llem.support.secrets import scrub

    excluded = set(exclude_keys)
    pairs: List[Tuple[str, str]] = []  # (the key without Hydra's +, ++ or ~, the override as typed)
    for line in map(scrub, map(str, overrides)):  # a secret typed in, or a URL's credentials: its name only
        key = line.partition("=")[0].lstrip("+~")
        if key not in excluded:
            pairs.append((key, line))
    if not pairs:
        return EMPTY
    pairs.sort()
    names = _short_keys([key for key, _ in pairs])
    items = [_safe(_item(names[key], line)) for key, line in pairs]
    full = ",".join(items)
    if len(full) <= MAX_CHARS:
        return full
    digest = hashlib.sha256("\0".join(line for _, line in pairs).encode()).hexdigest()[:8]
    for kept in range(len(items) - 1, -1, -1):  # the most leading pairs that fit beside the suffix
        suffix = f",{len(items) - kept}more-{digest}"
        head = ",".join(items[:kept])
        if len(head) + len(suffix) <= MAX_CHARS:
            break
    if not head:  # the first pair alone is too long: cut inside it
        head = items[0][: MAX_CHARS - len(suffix)]
    return head + suffix


def _item(name: str, line: str) -> str:
    """``name=value``; a deletion (``~key``, ``~key=value``) keeps its ``~``."""
    _, has_value, value = line.partition("=")
    return ("~" if line.startswith("~") else "") + name + (f"={value}" if has_value else "")


def _short_keys(keys: List[str]) -> dict:
    """Each key, or its last dotted part where that is unambiguous among these keys and the top-level keys."""
    top = top_level_keys()
    lasts = [key.rsplit(".", 1)[-1] for key in keys]
    names = {}
    for key, last in zip(keys, lasts):
        clash = lasts.count(last) > 1 or (last != key and last in top)
        names[key] = key if clash else last
    return names


def top_level_keys() -> set:
    from llem.config import Config

    return {f.name for f in dataclasses.fields(Config)}


def _safe(text: str) -> str:
    return UNSAFE.sub("_", text)


def resolver(*, _root_: Any) -> str:
    """``${llem_job_dir:}`` (``hydra.sweep.subdir``): this job's name from ``hydra.overrides.task``."""
    from omegaconf import OmegaConf

    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []
    exclude = OmegaConf.select(_root_, "hydra.job.config.override_dirname.exclude_keys", default=None) or []
    return job_dirname(list(overrides), list(exclude))


def sweep_job_dirname(config: Any, overrides: List[str]) -> str:
    """The dir name Hydra gives a sweep job with these overrides, when ``hydra.sweep.subdir`` is llem's
    default (llem.config.dirnames) or Hydra's override_dirname; else a name from the overrides' hash."""
    subdir = config.hydra.sweep._get_node("subdir")._value()
    opts = config.hydra.job.config.override_dirname
    if subdir == SUBDIR:
        return job_dirname(overrides, opts.exclude_keys)
    if subdir == "${hydra.job.override_dirname}":
        lines = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in opts.exclude_keys)
        return opts.item_sep.join(lines).replace("=", opts.kv_sep)
    return "invalid-" + hashlib.sha256("\0".join(overrides).encode()).hexdigest()[:12]
