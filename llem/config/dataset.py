"""The ``dataset.*`` keys: where requests come from (random token ids, a file, the prompts shipped inside
llem, a Hugging Face dataset), as dataclasses :mod:`llem.config` composes into the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from llem.config.load import OutputLengthsConfig
from llem.support.errors import require as _require


@dataclass
class DatasetConfig:
    """Where requests come from. ``num_requests`` requests are measured per job; null (the default)
    sizes the workload to the engine and the window (:mod:`llem.measure.sizing`)."""

    name: str = MISSING
    num_requests: Optional[int] = None  # null: measure.waves × the engine's capacity, more until min_window_s
    output_lengths: OutputLengthsConfig = field(default_factory=OutputLengthsConfig)  # with output_len=null

    def __post_init__(self) -> None:
        if self.num_requests is not None:
            _require(self.num_requests >= 1, "dataset.num_requests", self.num_requests,
                     "null (sized automatically) or an integer >= 1")

    def token_ids_only(self) -> Optional[str]:
        """The setting that makes its prompts token ids with no text (which a server that takes text only
        cannot be sent), or None where they have text."""
        return None


@dataclass
class RandomDatasetConfig(DatasetConfig):
    """Random token ids of exactly ``input_len`` tokens each (no tokenizer needed)."""

    name: str = "random"

    def token_ids_only(self) -> Optional[str]:
        return "dataset=random"


@dataclass
class SharedPrefixDatasetConfig(DatasetConfig):
    """Random token ids in ``num_groups`` groups whose prompts start with the same ``prefix_len`` ids (a
    system prompt shared by the group), each then its own random suffix up to ``input_len`` tokens in all.
    Request ``i`` belongs to group ``i % num_groups`` (round robin: the groups interleave in arrival order),
    so a prefix cache can serve every request of a group after its first. ``prefix_len=0``: no shared
    prefix (the same lengths, nothing to reuse)."""

    name: str = "shared_prefix"
    num_groups: int = 8
    prefix_len: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.num_groups >= 1, "dataset.num_groups", self.num_groups, "an integer >= 1")
        _require(self.prefix_len >= 0, "dataset.prefix_len", self.prefix_len,
                 "an integer >= 0 (tokens a group's prompts share), below input_len")
        if self.num_requests is not None:
            _require(self.num_groups <= self.num_requests, "dataset.num_groups", self.num_groups,
                     f"at most dataset.num_requests={self.num_requests} (each group needs a request)")

    def token_ids_only(self) -> Optional[str]:
        return "dataset=shared_prefix"


@dataclass
class ConversationsDatasetConfig(DatasetConfig):
    """Multi-turn conversations (a server; in-process vLLM, TensorRT-LLM): each turn is one request whose prompt is the
    conversation's history (earlier user messages and the *recorded* assistant replies, so every run sends the
    same prompts) plus the new user message. Turn k+1 is due ``think_time_s`` after turn k's reply ended; conversations
    start at the load's arrival times. ``path``: a ShareGPT-style JSON or JSONL file (each item
    ``{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``), its first ``num_conversations``
    (null: all) cut to ``turns`` user turns each (null: all); null ``path``: ``num_conversations`` synthetic
    conversations of ``turns`` turns, user messages of ``user_len`` and replies of ``assistant_len`` random
    token ids (seeded). The request count is theirs: ``num_requests`` stays null."""

    name: str = "conversations"
    path: Optional[str] = None  # a ShareGPT-style JSON/JSONL file; null: synthetic conversations
    num_conversations: Optional[int] = 8  # null with a path: every conversation in the file
    turns: Optional[int] = 4  # user turns per conversation (with a path: at most; null: all)
    user_len: int = 16  # synthetic: tokens of each user message
    assistant_len: int = 16  # synthetic: tokens of each recorded reply
    think_time_s: float = 1.0  # from a turn's reply ending to the next turn being due

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.num_requests is None, "dataset.num_requests", self.num_requests,
                 "null with dataset=conversations (the count is the conversations' turns: dataset.num_conversations "
                 "and dataset.turns)")
        _require(self.num_conversations is None or self.num_conversations >= 1, "dataset.num_conversations",
                 self.num_conversations, "an integer >= 1 (null: every conversation of dataset.path)")
        _require(self.turns is None or self.turns >= 1, "dataset.turns", self.turns,
                 "an integer >= 1 (null: every turn of each conversation of dataset.path)")
        if self.path is None:
            _require(self.num_conversations is not None, "dataset.num_conversations", None,
                     "an integer >= 1 when dataset.path is null (synthetic conversations)")
            _require(self.turns is not None, "dataset.turns", None,
                     "an integer >= 1 when dataset.path is null (synthetic conversations)")
        _require(self.user_len >= 1, "dataset.user_len", self.user_len, "an integer >= 1 (tokens)")
        _require(self.assistant_len >= 1, "dataset.assistant_len", self.assistant_len, "an integer >= 1 (tokens)")
        _require(self.think_time_s >= 0, "dataset.think_time_s", self.think_time_s, "a number of seconds >= 0")

    def token_ids_only(self) -> Optional[str]:
        return "dataset=conversations with dataset.path=null" if self.path is None else None

    def longest_prompt(self) -> Optional[int]:
        """Synthetic conversations: the last turn's prompt in tokens (None with a file: known once read)."""
        if self.path is not None:
            return None
        return self.turns * self.user_len + (self.turns - 1) * self.assistant_len


LONG_PROMPTS = ("truncate", "drop")
PROMPT_LAYOUTS = ("column", "alpaca", "sharegpt")


@dataclass
class TextDatasetConfig(DatasetConfig):
    """Prompts as text, tokenized once with the model's tokenizer (model.tokenizer, else model.hf_id).

    Prompts are taken in the source's order, or shuffled with ``seed`` (``shuffle``), until the
    requests asked for fit (a source that runs out is repeated, and counted): one longer than
    ``input_len`` tokens is cut to ``input_len``
    (``long_prompts=truncate``) or skipped (``drop``); one shorter than ``min_input_len`` is
    skipped. What was cut or skipped is counted in the results (``prompts_*`` columns).
    """

    shuffle: bool = False
    long_prompts: str = "truncate"  # truncate | drop
    min_input_len: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.long_prompts in LONG_PROMPTS, "dataset.long_prompts", self.long_prompts, ", ".join(LONG_PROMPTS))
        _require(self.min_input_len >= 1, "dataset.min_input_len", self.min_input_len, "an integer >= 1")


@dataclass
class FileDatasetConfig(TextDatasetConfig):
    """Prompts from a JSONL file (one object per line, text under ``field``) or a text file."""

    name: str = "file"
    path: str = MISSING
    field: str = "prompt"
    format: str = "auto"  # auto | jsonl | text

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.format in ("auto", "jsonl", "text"), "dataset.format", self.format, "auto, jsonl, text")


@dataclass
class BuiltinDatasetConfig(TextDatasetConfig):
    """A few hundred short, varied prompts shipped inside llem: a text workload with no download."""

    name: str = "builtin"
    shuffle: bool = True


@dataclass
class HFDatasetConfig(TextDatasetConfig):
    """A Hugging Face dataset through the ``datasets`` library (``pip install ".[datasets]"``).

    ``hf_id`` names it on the Hub; ``path`` (a ``save_to_disk`` directory, a directory of data
    files, or one JSON/JSONL/Parquet/CSV file) reads a local copy instead. ``layout`` says how a
    record becomes a prompt: ``column`` (the text under ``column``), ``alpaca`` (instruction, then
    input) or ``sharegpt`` (the first human turn of the conversation under ``column``). With the
    Hub unreachable (or HF_HUB_OFFLINE=1) the dataset is read from the local Hub cache only.
    """

    name: str = "hf"
    hf_id: Optional[str] = None  # e.g. tatsu-lab/alpaca
    subset: Optional[str] = None  # the dataset's configuration name, if it has several
    split: str = "train"
    column: str = "text"
    layout: str = "column"  # column | alpaca | sharegpt
    data_files: Optional[str] = None  # a file or glob inside the dataset repo (or under path)
    revision: Optional[str] = None
    path: Optional[str] = None  # a local copy, read instead of the Hub
    shuffle: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.hf_id) or bool(self.path), "dataset.hf_id", self.hf_id,
                 "a Hugging Face dataset id (or set dataset.path to a local copy)")
        _require(self.layout in PROMPT_LAYOUTS, "dataset.layout", self.layout, ", ".join(PROMPT_LAYOUTS))
        _require(bool(self.split), "dataset.split", self.split, "a split name, e.g. train")
        _require(bool(self.column), "dataset.column", self.column, "a column name")
