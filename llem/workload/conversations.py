"""The ``dataset=conversations`` workload: multi-turn conversations, one request per user turn.

A turn's prompt is its conversation's history, the earlier user messages and the *recorded* assistant
replies (from the file, or drawn by the generator), then the new user message. The replies the server
generates are never fed back, so every run sends the same prompts token for token, whatever the server
answered. The history is what a prefix cache could serve (``prefix_reusable_tokens``; 0 for a first turn).

Each turn asks for its recorded reply's length (``output_len=null``, within ``dataset.output_lengths``' min
and max; EOS is ignored, so random weights still give it), else ``output_len``; a file's last user message
with no reply after it draws a natural length. Turn k+1 follows turn k (``Request.after``): the server
client sends it (in-process vLLM and TensorRT-LLM add it) ``dataset.think_time_s`` after turn k's reply
ended. Only first turns get arrival times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from llem.support.errors import ConfigError, WorkloadError
from llem.workload.records import Message, Request

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
ROLES = ", ".join(USER_ROLES + ASSISTANT_ROLES)
Turns = List[Tuple[str, str]]  # (user | assistant, text) of one conversation


def _items(path: Path) -> Iterator[Tuple[str, Any]]:
    """(where, item) of a JSON file (a list of items) or a JSONL file (one item per line); where names the
    file and the line (JSONL) or the item's index (JSON)."""
    from llem.workload import _open_prompt_file, _text_lines

    with _open_prompt_file(path) as fh:
        if path.suffix.lower() == ".json":
            try:
                items = json.loads(fh.read().removeprefix("\ufeff"))
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
            if not isinstance(items, list):
                raise WorkloadError(f"{path}: a .json file must hold a list of conversations, not a "
                                    f"{type(items).__name__}")
            for i, item in enumerate(items):
                yield f"{path} item {i}", item
            return
        for line_no, line in _text_lines(path, fh):
            line = (line.removeprefix("\ufeff") if line_no == 1 else line).strip()
            if not line:
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}:{line_no}: not JSON ({exc.msg})") from None


def parse_conversation(where: str, item: Any) -> Turns:
    """One ShareGPT-style item as (role, text) pairs, checked: a non-empty ``conversations`` list of
    ``{"from": ..., "value": ...}`` (or ``role``/``content``) messages, a user message first, then
    user and assistant in turn."""
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list) or not turns:
        raise WorkloadError(f"{where}: field 'conversations' must be a non-empty list of messages "
                            '({"from": "human"|"gpt", "value": ...})')
    parsed: Turns = []
    for k, message in enumerate(turns):
        field = f"conversations[{k}]"
        if not isinstance(message, dict):
            raise WorkloadError(f"{where}: {field} is a {type(message).__name__}, not an object")
        who = str(message.get("from", message.get("role", ""))).lower()
        text = message.get("value", message.get("content"))
        if who not in USER_ROLES + ASSISTANT_ROLES:
            raise WorkloadError(f"{where}: {field}.from={who!r} is not a known role: allowed {ROLES}")
        if not isinstance(text, str):
            raise WorkloadError(f"{where}: {field}.value is {type(text).__name__}, not text")
        role = "user" if who in USER_ROLES else "assistant"
        expected = "a user" if k % 2 == 0 else "an assistant"
        if role != expected.split()[1]:
            first = " (a conversation starts with a user message)" if k == 0 else ""
            raise WorkloadError(f"{where}: {field}.from={who!r}: expected {expected} message{first}; user and "
                                "assistant messages alternate")
        if role == "user" and not text.strip():
            raise WorkloadError(f"{where}: {field}.value is empty: a user message needs text")
        parsed.append((role, text))
    return parsed


def read_conversations(path: Path, limit: Optional[int]) -> List[Turns]:
    """The first ``limit`` (None: all) conversations of a ShareGPT-style JSON or JSONL file."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise WorkloadError(f"dataset.path={str(path)!r}: a conversations file must be .json (a list) or .jsonl "
                            "(one conversation per line)")
    out: List[Turns] = []
    for where, item in _items(path):
        if limit is not None and len(out) >= limit:
            break
        out.append(parse_conversation(where, item))
    if not out:
        raise WorkloadError(f"dataset.path={str(path)!r} holds no conversations")
    return out


def turn_requests(conversations: List[List[Message]], max_turns: Optional[int], input_len: int,
                  natural: bool, bounds: Any, think_s: float) -> Tuple[List[Request], int]:
    """One request per user message (at most ``max_turns`` a conversation): the history and that message;
    a turn whose prompt would pass ``input_len`` tokens ends its conversation. Returns the requests and how
    many turns were left out for length."""
    requests: List[Request] = []
    cut = 0
    for c, messages in enumerate(conversations):
        history: List[Message] = []
        previous = None
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        for t, i in enumerate(users[:max_turns]):
            prompt = history + [messages[i]]
            ids = [x for m in prompt for x in m.token_ids]
            if len(ids) > input_len:
                cut += len(users[:max_turns]) - t
                break
            reply = messages[i + 1] if i + 1 < len(messages) else None
            asked = None
            if natural and reply is not None:
                asked = min(max(len(reply.token_ids), bounds.min), bounds.max)
            text = None if any(m.text is None for m in prompt) else "\n\n".join(m.text for m in prompt)
            request = Request(len(requests), ids, text, output_len=asked, messages=prompt, conversation_index=c,
                              turn_index=t, after=previous, think_s=think_s if previous is not None else 0.0,
                              prefix_reusable_tokens=len(ids) - len(messages[i].token_ids))
            requests.append(request)
            previous = request.request_id
            history = prompt + ([reply] if reply is not None else [])
    if not requests:
        raise WorkloadError(f"no turn of dataset=conversations fits input_len={input_len}: every first user "
                            "message is longer (raise input_len)")
    return requests, cut


def synthetic(dataset: Any, vocab_size: int, seed: int, avoid: set) -> List[List[Message]]:
    """``num_conversations`` conversations of ``turns`` user messages of ``user_len`` random token ids, each
    followed by a recorded reply of ``assistant_len`` (seeded, special ids avoided)."""
    from llem.workload import random_ids

    n = dataset.num_conversations * dataset.turns
    users = random_ids(n, dataset.user_len, vocab_size, (seed, 4), avoid)
    replies = random_ids(n, dataset.assistant_len, vocab_size, (seed, 5), avoid)
    out = []
    for c in range(dataset.num_conversations):
        rows = range(c * dataset.turns, (c + 1) * dataset.turns)
        out.append([m for k in rows for m in (Message("user", users[k].tolist()),
                                              Message("assistant", replies[k].tolist()))])
    return out


def tokenized(conversations: List[Turns], tok: Any, vocab_size: Optional[int]) -> List[List[Message]]:
    """Each message tokenized on its own (the model's special tokens before a conversation's first only)."""
    out = []
    for turns in conversations:
        messages = []
        for k, (role, text) in enumerate(turns):
            ids = list(tok(text, add_special_tokens=k == 0)["input_ids"])
            if vocab_size and ids and max(ids) >= vocab_size:
                raise WorkloadError(f"the tokenizer gives token id {max(ids)} but model.architecture.vocab_size="
                                    f"{vocab_size}: set model.tokenizer to one that fits the model")
            messages.append(Message(role, ids, text))
        out.append(messages)
    return out


def conversation_requests(config: Any) -> Tuple[List[Request], int]:
    """The requests of ``dataset=conversations`` from the typed config, and the turns cut for length."""
    from llem.workload import load_tokenizer, special_token_ids

    dataset, arch = config.dataset, config.model.architecture
    vocab = arch.get("vocab_size")
    if dataset.path is None:
        vocab = vocab or len(load_tokenizer(config.model))
        conversations = synthetic(dataset, int(vocab), config.seed, special_token_ids(arch))
    else:
        texts = read_conversations(Path(dataset.path).expanduser(), dataset.num_conversations)
        conversations = tokenized(texts, load_tokenizer(config.model), int(vocab) if vocab else None)
    return turn_requests(conversations, dataset.turns, config.input_len, config.output_len is None,
                         dataset.output_lengths, dataset.think_time_s)


def check_config(config: Any) -> None:
    """A conversations file is read and checked before anything loads: each item's messages, roles and order
    (the error names the file, its line or item, and the field)."""
    if config.dataset.name != "conversations" or config.dataset.path is None:
        return
    try:
        read_conversations(Path(config.dataset.path).expanduser(), config.dataset.num_conversations)
    except WorkloadError as exc:
        raise ConfigError(f"dataset.path: {exc}") from None
