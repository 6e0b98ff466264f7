"""Checks that need more than one key or a fact outside the config, run before anything loads
(in the job's parent and by ``dry_run``): the model's context against the requested lengths, and
the sweeper objective against the result columns."""

from __future__ import annotations

import json
import logging
from typing import Optional, Tuple

from llem.config import Config, Weights
from llem.errors import ConfigError
from llem.results.row import part_columns
from llem.results.schema import F64, I64

log = logging.getLogger(__name__)

# config.json keys that give a model's maximum sequence length, in the order transformers' configs use them
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def numeric_columns() -> list:
    return [c.name for c in part_columns() if c.type in (F64, I64)]


def check_objective(config: Config) -> None:
    """objective.metric and objective.bounds name numeric result columns."""
    known = set(numeric_columns())
    examples = "j_per_output_token, output_tok_per_s, ttft_ms_p99, itl_ms_p50, avg_power_w"
    if config.objective.metric not in known:
        raise ConfigError(f"objective.metric={config.objective.metric!r} is invalid: allowed a numeric result "
                          f"column, e.g. {examples} (the column reference: docs/columns.md)")
    for column in config.objective.bounds:
        if column not in known:
            raise ConfigError(f"objective.bounds.{column} is invalid: bounds name numeric result columns, "
                              f"e.g. {examples}")


def max_positions(config: Config) -> Tuple[Optional[int], str]:
    """The model's maximum positions and where that came from: its architecture (random weights), or
    the config.json of a local directory or of the Hugging Face cache (no download, no import of
    transformers); (None, why) when it cannot be known before loading."""
    model = config.model
    if model.weights == Weights.random:
        arch = dict(model.architecture)
        source = "model.architecture"
    else:
        arch, source = _pretrained_config(model.hf_id, model.revision)
        if arch is None:
            return None, source
    for key in POSITION_KEYS:
        value = arch.get(key)
        if isinstance(value, int) and value > 0:
            return value, f"{source}.{key}"
    return None, f"{source} names no maximum positions"


def _pretrained_config(hf_id: str, revision: Optional[str]) -> Tuple[Optional[dict], str]:
    from pathlib import Path

    local = Path(hf_id).expanduser() / "config.json"
    path = local if local.is_file() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None, "huggingface_hub is not installed"
        found = try_to_load_from_cache(hf_id, "config.json", revision=revision)
        path = Path(found) if isinstance(found, str) else None
    if path is None:
        return None, f"{hf_id} is not in the local Hugging Face cache"
    try:
        return json.loads(path.read_text()), f"{hf_id}'s config.json"
    except (OSError, ValueError) as exc:
        return None, f"{path} unreadable ({exc})"


def check_lengths(config: Config) -> None:
    """input_len + output_len (and the warm-up's length) within the model's maximum positions."""
    limit, source = max_positions(config)
    if limit is None:
        log.debug("maximum positions not checked before loading: %s", source)
        return
    out = config.output_len_max
    longest = config.input_len + max(out, config.warmup.output_len or 0)
    if longest > limit:
        own = "output_len" if config.output_len is not None else "dataset.output_lengths.max"
        which = "warmup.output_len" if (config.warmup.output_len or 0) > out else own
        raise ConfigError(f"input_len + {which} = {config.input_len} + {longest - config.input_len} = {longest} "
                          f"is invalid: allowed at most {limit}, the model's maximum positions ({source})")


def check_schedule(config: Config) -> None:
    """A timed load's arrivals fit in measure.max_window_s: the n-th of ``dataset.num_requests`` arrives
    (n − 1) / load.request_rate after the first (their gaps are rescaled to that mean, llem.arrivals)."""
    n, rate = config.dataset.num_requests, config.load.request_rate
    if n is None or not config.load.timed:
        return
    last_s, bound = (n - 1) / rate, config.measure.max_window_s
    if last_s > bound:
        raise ConfigError(f"load.request_rate={rate:g} is invalid with dataset.num_requests={n}: the last request "
                          f"would arrive {last_s:.4g} s after the first, past measure.max_window_s={bound:g}; "
                          f"allowed a rate >= {(n - 1) / bound:.4g} req/s, fewer requests, or a longer "
                          "measure.max_window_s")


def check(config: Config) -> None:
    """Every check of this module (raises ConfigError naming the key)."""
    check_objective(config)
    check_lengths(config)
    check_schedule(config)
