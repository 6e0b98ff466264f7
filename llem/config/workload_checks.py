"""The checks of a job's config that tie its workload (the dataset, a replayed trace) to the keys beside it
(``input_len``, ``output_len``), run as the :class:`llem.config.Config` is built, before
anything loads."""

from __future__ import annotations

from typing import Any

from llem.config.dataset import ConversationsDatasetConfig, RandomDatasetConfig, SharedPrefixDatasetConfig
from llem.support.errors import require as _require


def check(config: Any) -> None:
    """Each workload's needs of the keys beside it; ConfigError naming the key and what is allowed."""
    _check_trace(config)
    dataset = config.dataset
    if isinstance(dataset, SharedPrefixDatasetConfig):  # a prompt is its group's prefix, then its own suffix
        _require(dataset.prefix_len < config.input_len, "dataset.prefix_len", dataset.prefix_len,
                 f"below input_len={config.input_len} (each prompt keeps at least one token of its own)")
    if isinstance(dataset, ConversationsDatasetConfig):
        _check_conversations(config)


def _check_conversations(config: Any) -> None:
    """A synthetic conversation's last prompt fits input_len, in every mode (which engines follow turns
    in-process is each engine's to say: ``Engine.no_conversations``)."""
    longest = config.dataset.longest_prompt()
    _require(longest is None or longest <= config.input_len, "dataset.turns", config.dataset.turns,
             f"few enough that the last turn's prompt (turns × user_len + (turns - 1) × assistant_len = "
             f"{longest} tokens) fits input_len={config.input_len}")


def _check_trace(config: Any) -> None:
    """A trace gives each request its lengths: its prompts are random token ids (dataset=random) and its
    output lengths are its own (output_len=null)."""
    if getattr(config.load, "trace", None) is None:
        return
    _require(isinstance(config.dataset, RandomDatasetConfig), "dataset", config.dataset.name,
             "random with load.trace (its prompts are random token ids of the trace's input_tokens)")
    _require(config.output_len is None, "output_len", config.output_len,
             "null with load.trace (each request asks for the trace's output_tokens, else a natural length "
             "from dataset.output_lengths)")
