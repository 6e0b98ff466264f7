"""transformers serve's paged KV cache, sized to the job's workload.

Left to itself, ``transformers serve --continuous-batching`` gives its paged KV cache most of the memory
it finds free (on a 24 GB CPU machine its processes held ~14 GB for a 1.4 M-parameter model and took over
a minute to start). llem asks instead for the pages the job's sequences need: ``batch`` (or
``load.max_concurrency`` where larger) sequences of ``input_len`` + the longest output, in pages of
transformers' default page size, plus one page of slack per sequence for the scheduler's safety margin.
A cache size or page size the user passes in ``server.args`` wins.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

from llem.config import IN_PROCESS_BATCH, Config
from llem.results.environment import package_version

PAGE_TOKENS = 256  # transformers' default page size (ContinuousBatchingConfig.page_size)
FIRST_VERSION = (5, 10)  # the first transformers whose serve takes --cb-num-blocks
USER_CACHE_ARGS = ("--cb-num-blocks", "--cb-block-size", "--cb-max-memory-percent")


def _version(text: Optional[str]) -> Tuple[int, ...]:
    parts = []
    for piece in (text or "").split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cache_sequences(config: Config) -> int:
    """The sequences the cache must hold at once: ``batch`` (null: the in-process default), or
    ``load.max_concurrency`` where larger."""
    return max(config.batch or IN_PROCESS_BATCH, config.load.max_concurrency or 0)


def cache_pages(config: Config) -> int:
    """Pages for every sequence at its longest (prompt + output), with one page of slack each."""
    tokens = config.input_len + config.output_len_max
    return cache_sequences(config) * (math.ceil(tokens / PAGE_TOKENS) + 1)


def cache_args(config: Config, transformers_version: Optional[str] = None) -> Tuple[List[str], str]:
    """(the arguments that size the cache, what was decided and why) for this job's server."""
    version = transformers_version or package_version("transformers")
    user = [a for a in config.server.args if str(a).split("=")[0] in USER_CACHE_ARGS]
    if user:
        return [], f"transformers serve's KV cache is sized by server.args ({' '.join(map(str, user))})"
    if _version(version) < FIRST_VERSION:
        return [], (f"transformers {version} serve takes no cache size: its KV cache is sized from the free memory "
                    "it finds (transformers >= 5.10 lets llem size it to the workload)")
    pages = cache_pages(config)
    tokens = config.input_len + config.output_len_max
    return ["--cb-num-blocks", str(pages)], (
        f"transformers serve's KV cache holds {pages} pages of {PAGE_TOKENS} tokens: {cache_sequences(config)} "
        f"sequences of {tokens} tokens (batch, or load.max_concurrency where larger); more at once may wait "
        "in the server for free pages (server.args=[--cb-num-blocks,N] sets another size)")
