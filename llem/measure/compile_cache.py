"""Compile caches that outlive a job: an engine's compiled artifacts kept under llem's ``cache_dir``.

A sweep builds the same engine again and again, one process per job; what the engine compiles
(vLLM's torch.compile graphs, Inductor and Triton kernels, TensorRT engines) is kept under one
root, so later jobs load it. The build stays in ``load``, never in a measured window. Whether a
build reused the cache is read off the files: artifacts written during load mean it compiled
(``miss``); none written while some were there before means it loaded them (``hit``).
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Dict

from llem.backends.base import CompileCache
from llem.results.row import BuildCache

log = logging.getLogger(__name__)


def apply(cache: CompileCache) -> None:
    """Point the engine's caches under the root (a variable already set is the user's choice, kept)."""
    for name, value in cache.env.items():
        if os.environ.get(name):
            continue
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("compile cache %s=%s not usable (%s): the engine uses its default", name, value, exc)
            continue
        os.environ[name] = value


def snapshot(cache: CompileCache) -> Dict[str, int]:
    """Every artifact file now: path → modification time (ns)."""
    out: Dict[str, int] = {}
    for pattern in cache.artifacts:
        for path in glob.glob(pattern, recursive=True):
            try:
                if os.path.isfile(path):
                    out[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
    return out


def outcome(cache: CompileCache, root: Path, before: Dict[str, int], after: Dict[str, int]) -> BuildCache:
    """hit, miss or none, from the artifacts before and after the build."""
    written = sum(1 for path, mtime in after.items() if before.get(path) != mtime)
    if not cache.artifacts:
        state = "none"
    elif written:
        state = "miss"
    else:
        state = "hit" if before else "none"
    return BuildCache(compile_cache=state, compile_cache_dir=str(root),
                      num_compile_files_written=written if cache.artifacts else None)
