"""The data that crosses layers: a request, what an engine returned for it, and the clock both are
timed on. Engines, the workload, metrics and meters all import this module and nothing above it,
so the measurement core never imports an engine and engines never import a meter."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional


def now() -> float:
    """The clock every engine stamps request times with (CLOCK_MONOTONIC on Linux)."""
    return time.perf_counter()


@dataclass
class Message:
    """One message of a conversation's prompt: ``user`` or ``assistant``, its token ids, its text when it had one."""

    role: str
    token_ids: List[int]
    text: Optional[str] = None


@dataclass
class Request:
    """One prompt, as token ids (every engine does the same work), with its text when it had one, the
    output length it asks for (None: the job's ``output_len``) and when it arrives: seconds after the
    measured call starts (None: at once, with every other request); a trace's requests carry their class; a
    shared-prefix workload's, their group and how many of their prompt's tokens an earlier request shared. A
    conversation's turn carries its messages (``token_ids`` are theirs, joined), its place, and the request it
    follows (``after``): it is due ``think_s`` after that one's reply ended, not at ``arrival_s``."""

    request_id: int
    token_ids: List[int]
    text: Optional[str] = None
    output_len: Optional[int] = None
    arrival_s: Optional[float] = None
    request_class: Optional[str] = None
    prefix_group_index: Optional[int] = None
    prefix_reusable_tokens: Optional[int] = None
    messages: Optional[List[Message]] = None
    conversation_index: Optional[int] = None
    turn_index: Optional[int] = None
    after: Optional[int] = None  # the request_id of the turn before it
    think_s: float = 0.0  # from that turn's end to this one's due time

    @property
    def input_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class RequestResult:
    """What the engine returned for one request, timed on :func:`now` (seconds).

    ``token_times_s`` holds the time each generated token reached the host, when the engine
    can tell; the experiment derives TTFT, end-to-end latency and ITL from these. ``start_s`` is the
    start of service (first scheduled by the engine; sent, for a server).
    """

    request_id: int
    input_tokens: int
    output_tokens: int
    start_s: float
    end_s: float
    first_token_s: Optional[float] = None
    token_times_s: Optional[List[float]] = None
    batch_index: Optional[int] = None
    process_index: Optional[int] = None  # the data-parallel replica that served it
    timing_note: Optional[str] = None  # why a timing is missing, if it is
    arrival_s: Optional[float] = None  # when it was due (None: when the call started); TTFT and e2e count from it
    lateness_s: Optional[float] = None  # the engine's or client's own delay: sent − when it could be (due, slot free)
    output_len_requested: Optional[int] = None  # the length it asked for
    error: Optional[str] = None  # why it failed (an HTTP error, a dropped stream): recorded, never dropped
    token_count_note: Optional[str] = None  # how a token count reported disagreed with the tokens asked or seen
    server_input_tokens: Optional[int] = None  # the prompt tokens a server reported (its usage.prompt_tokens)
    prompt_tokens_cached: Optional[int] = None  # of the prompt, served from a prefix cache, where said (None: not)


Progress = Callable[[int], None]  # called with the number of requests just completed
