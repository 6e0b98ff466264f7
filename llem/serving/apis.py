"""The OpenAI-compatible APIs the client speaks, keyed by ``server.api``: where a request is posted, the keys
that carry its prompt and its length, and the stream handler that reads its reply. The rest of a request
(model, streaming with usage, decoding, the engine's exact-length keys, ``server.extra_body``) and every
rule of timing, token counting and errors are the same for all of them (llem.serving.client).

``completions`` (``/v1/completions``): the prompt as token ids or text, the length as ``max_tokens``.
``chat`` (``/v1/chat/completions``): the prompt's text as one user message, or a conversation's turn as
its messages, user and assistant in turn with the new user message last (the server applies its chat
template), the length as ``max_completion_tokens`` (the current name) and ``max_tokens`` (the older one,
which some servers read alone), equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Type

from llem.config.load import TEXT_ONLY_APIS
from llem.serving.stream import ChatStreamParser, StreamParser


def completions_keys(prompt: Any, length: int) -> Dict[str, Any]:
    return {"prompt": prompt, "max_tokens": length}


def chat_keys(prompt: Any, length: int) -> Dict[str, Any]:
    """``prompt``: one user message's text, or a list of messages (role, content)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return {"messages": messages, "max_completion_tokens": length, "max_tokens": length}


@dataclass(frozen=True)
class Api:
    """One API: its path under the server's URL, the request keys for a prompt and a length, its stream handler."""

    name: str
    path: str
    keys: Callable[[Any, int], Dict[str, Any]]
    parser: Type[StreamParser]
    takes_messages: bool = False  # whether a conversation's turn goes as its messages (else as one prompt)

    @property
    def takes_token_ids(self) -> bool:
        """Whether its prompt may be token ids (chat's messages hold text only)."""
        return self.name not in TEXT_ONLY_APIS


APIS: Dict[str, Api] = {
    "completions": Api("completions", "/v1/completions", completions_keys, StreamParser),
    "chat": Api("chat", "/v1/chat/completions", chat_keys, ChatStreamParser, takes_messages=True),
}
