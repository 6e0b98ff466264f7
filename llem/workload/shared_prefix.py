"""The ``dataset=shared_prefix`` workload: groups of prompts that start with the same token ids.

A group's prefix stands for a system prompt shared by its requests: with a prefix cache the engine can
reuse its KV entries for every request of the group after the first, so sweeping the cache on and off
measures what that reuse saves. Request ``i`` is in group ``i % num_groups`` (round robin), so the groups
interleave in arrival order and a larger count keeps the first requests as they were.
"""

from __future__ import annotations

from typing import List

from llem.support.errors import WorkloadError
from llem.workload import random_ids
from llem.workload.records import Request


def shared_prefix_requests(num: int, num_groups: int, prefix_len: int, input_len: int, vocab_size: int, seed: int,
                           avoid: set = frozenset()) -> List[Request]:
    """``num`` prompts of ``input_len`` token ids: group ``i % num_groups``'s ``prefix_len`` ids, then
    ``input_len - prefix_len`` ids of its own. A group's first request has nothing a cache could hold
    (``prefix_reusable_tokens`` 0); each later one, its prefix."""
    if num < num_groups:
        raise WorkloadError(f"dataset.num_groups={num_groups} is more than the {num} requests of this job: each "
                            "group needs a request (set dataset.num_requests, or fewer groups)")
    prefixes = random_ids(num_groups, prefix_len, vocab_size, (seed, 2), avoid)
    suffixes = random_ids(num, input_len - prefix_len, vocab_size, (seed, 3), avoid)
    requests = []
    for i in range(num):
        group = i % num_groups
        ids = prefixes[group].tolist() + suffixes[i].tolist()
        reusable = prefix_len if i >= num_groups else 0
        requests.append(Request(i, ids, prefix_group_index=group, prefix_reusable_tokens=reusable))
    return requests
