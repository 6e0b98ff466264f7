"""Checks that need more than one key or a fact outside the config, run before anything loads
(in the job's parent and by ``dry_run``): the model's context against the requested lengths, and
the sweeper objective against the result columns."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Iterable, Optional, Tuple

from llem.config import Config, Weights
from llem.results.row import part_columns
from llem.results.schema import F64, I64
from llem.support.errors import ConfigError

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
    (n − 1) / load.request_rate after the first (their gaps are rescaled to that mean, llem.workload.arrivals)."""
    n, rate = config.dataset.num_requests, config.load.request_rate
    if n is None or rate == float("inf"):
        return
    last_s, bound = (n - 1) / rate, config.measure.max_window_s
    if last_s > bound:
        raise ConfigError(f"load.request_rate={rate:g} is invalid with dataset.num_requests={n}: the last request "
                          f"would arrive {last_s:.4g} s after the first, past measure.max_window_s={bound:g}; "
                          f"allowed a rate >= {(n - 1) / bound:.4g} req/s, fewer requests, or a longer "
                          "measure.max_window_s")


# a decimal literal with an exponent, e.g. 1e400 (YAML and Hydra read one too large for a float as inf)
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+(?![\w.])")


def check_overrides(overrides: Iterable[str]) -> None:
    """No number typed on the command line overflows a float: ``1e400`` would silently become inf (a key
    that takes inf, e.g. load.request_rate, must say ``inf``)."""
    for override in overrides:
        key, _, value = override.partition("=")
        for literal in NUMBER.findall(value):
            if abs(float(literal)) == float("inf"):
                raise ConfigError(f"{key.lstrip('+~')}={literal} is invalid: the number overflows a float "
                                  "(at most about 1.8e308); write inf where the key takes it")


def _command_line() -> list:
    """The job's overrides as typed, when Hydra runs it (empty otherwise, e.g. a config built in code)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # no Hydra run: nothing was typed
        return []


HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what a Bearer token can be in an HTTP header: printable ASCII


def check_api_key(config: Config) -> None:
    """server.api_key_env names a variable that is set, to a value long enough to be scrubbed as a secret and
    sendable as an HTTP header (a line break or a non-ASCII character would fail every request instead)."""
    from llem.support.secrets import MIN_SECRET_LEN

    name = config.server.api_key_env
    if name is None:
        return
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"server.api_key_env={name}: the environment variable {name} is not set: export the "
                          "server's API key in it (its value is sent as Authorization: Bearer, never written)")
    if len(value) < MIN_SECRET_LEN:
        raise ConfigError(f"server.api_key_env={name}: the value of {name} has fewer than {MIN_SECRET_LEN} "
                          "characters, too short to be kept out of logs and files as a secret")
    if not HEADER_SAFE.fullmatch(value):
        raise ConfigError(f"server.api_key_env={name}: the value of {name} holds a space, line break, control or "
                          "non-ASCII character, which an HTTP header cannot carry: allowed printable ASCII only")


def check_prompts(config: Config) -> None:
    """Prompts sent as text (server.api=chat, or server.prompt=text) have text: a dataset of token ids alone
    (``DatasetConfig.token_ids_only``: random, shared_prefix, synthetic conversations) becomes text only
    through the id-word tokenizer a launched server on random weights loads."""
    from llem.config.load import TEXT_ONLY_APIS

    s = config.server
    text_only = s.api in TEXT_ONLY_APIS or s.prompt == "text"
    what = config.dataset.token_ids_only()
    if s.mode == "none" or not text_only or what is None:
        return
    if s.mode == "launch" and config.model.weights == Weights.random:
        return  # its tokenizer is llem's id-word one: token ids are written as text exactly
    why = f"server.api={s.api} takes text prompts only" if s.api in TEXT_ONLY_APIS else "server.prompt=text"
    raise ConfigError(f"{what} is invalid with {why} and server={s.mode}"
                      f"{' on pretrained weights' if s.mode == 'launch' else ''}: random prompts are token ids "
                      "with no text; allowed a text dataset (dataset=builtin, file, hf, sharegpt …), "
                      "server.api=completions with server.prompt=auto or token_ids, or server=launch with "
                      "model.weights=random (its id-word tokenizer writes token ids as text)")


def check(config: Config) -> None:
    """Every check of this module (raises ConfigError naming the key)."""
    check_overrides(_command_line())
    check_objective(config)
    check_lengths(config)
    check_schedule(config)
    check_api_key(config)
    check_prompts(config)
