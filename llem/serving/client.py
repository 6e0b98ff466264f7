"""The HTTP client that stands in for an engine when a server serves the requests (server=launch/external).

It is an :class:`Engine` to the measurement protocol: ``load`` finds the served model and how it takes
prompts, ``generate`` sends every request to ``POST /v1/completions`` at its arrival time (aiohttp,
streamed server-sent events, ``stream_options.include_usage``) with at most ``load.max_concurrency`` in
flight. Per request: arrival (when it was due and the client woke for it), start of service (sent),
the time of every streamed chunk that carried text, the end, and the server's ``usage``
(``completion_tokens`` checked against the length asked for). An HTTP error, a dropped stream or a
timeout is the request's ``error``: recorded, never dropped.

Prompts go as token ids where the server takes them (``server.prompt=auto`` asks once with a one-token
request), as text otherwise: the request's own text, or its ids as id-words when the server's tokenizer
is llem's (random weights; :mod:`llem.backends._served_model`), so the work is the same token for token.
Chunks are not always tokens: with the id-word tokenizer each word of a chunk is one token; elsewhere
each chunk is stamped once and the request's ``timing_note`` says so when their count differs from
the server's token count.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Dict, List, Optional, Sequence

from llem.backends._served_model import id_words, words_in
from llem.backends.base import Engine, EngineInfo, installed
from llem.config import BackendConfig, Config
from llem.errors import EngineUnavailable, ServerError, WorkloadError
from llem.install import install_hint
from llem.records import Progress, Request, RequestResult, now
from llem.serving.server import Endpoint, alive, last_lines

log = logging.getLogger(__name__)

ERROR_BODY_CHARS = 300


class ServerEngine(Engine):
    """An OpenAI-compatible server measured over HTTP."""

    name = "server"
    config_class = BackendConfig
    no_arrivals = None
    no_natural_lengths = None

    def __init__(self, config: Config, device: str, endpoint: Endpoint, extras) -> None:
        super().__init__(config, device)
        self.endpoint = endpoint
        self.extras = extras  # output_len -> the JSON keys that make the server generate exactly that many
        self.model_name: Optional[str] = endpoint.model_name
        self.prompt = endpoint.prompt

    def check(self) -> None:
        if not installed("aiohttp"):
            raise EngineUnavailable(f"server mode needs aiohttp: {install_hint('serving')}")

    def load(self) -> None:
        asyncio.run(self._discover())

    async def _discover(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            if self.model_name is None:
                async with session.get(f"{self.endpoint.url}/v1/models") as resp:
                    data = await resp.json(content_type=None)
                names = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)]
                if not names:
                    raise ServerError(f"{self.endpoint.url}/v1/models lists no model: set server.model_name")
                self.model_name = names[0]
            if self.prompt == "auto":  # one token, asked as token ids: a 4xx means text only
                body = {"model": self.model_name, "prompt": [1, 2, 3], "max_tokens": 1}
                async with session.post(f"{self.endpoint.url}/v1/completions", json=body) as resp:
                    self.prompt = "token_ids" if resp.status == 200 else "text"
                    await resp.read()
        log.info("server %s serves %s; prompts sent as %s", self.endpoint.url, self.model_name, self.prompt)

    def _prompt(self, request: Request) -> Any:
        if self.prompt == "token_ids":
            return list(request.token_ids)
        if self.endpoint.id_words:
            return id_words(request.token_ids)
        if request.text is None:
            raise WorkloadError("this server takes text prompts only and the dataset gives token ids without text: "
                                "use a text dataset (dataset=builtin, file, hf …) or a server that takes token ids")
        return request.text

    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        results = asyncio.run(self._send_all(list(requests), output_len, progress))
        if not alive(self.endpoint.pid):
            raise ServerError(f"the server (pid {self.endpoint.pid}) died while it was measured; its last log "
                              f"lines:\n{last_lines(self.endpoint.log_path)}")
        return results

    async def _send_all(self, requests: List[Request], output_len: Optional[int], progress: Progress
                        ) -> List[RequestResult]:
        import aiohttp

        cap = self.config.load.max_concurrency
        slots = asyncio.Semaphore(cap) if cap else None
        timeout = aiohttp.ClientTimeout(total=self.config.server.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            t0 = now()
            tasks = [asyncio.create_task(self._one(session, r, t0, slots, output_len, progress)) for r in requests]
            return list(await asyncio.gather(*tasks))

    def _body(self, request: Request, length: int) -> Dict[str, Any]:
        d = self.config.decoding
        body: Dict[str, Any] = {"model": self.model_name, "prompt": self._prompt(request), "max_tokens": length,
                                "stream": True, "stream_options": {"include_usage": True},
                                "temperature": d.temperature}
        if not d.greedy:  # as the in-process engines do: greedy decoding sends no seed, top_p or top_k
            body.update(top_p=d.top_p, seed=self.config.seed)
            if d.top_k:
                body["top_k"] = d.top_k
        body.update(self.extras(length))
        body.update(self.config.server.extra_body)
        return body

    async def _one(self, session, request: Request, t0: float, slots, output_len: Optional[int],
                   progress: Progress) -> RequestResult:
        length = output_len if output_len is not None else (request.output_len or self.config.output_len_max)
        due = t0 + (request.arrival_s or 0.0)
        wait = due - now()
        if wait > 0:
            await asyncio.sleep(wait)
        arrival = now()
        if slots is not None:
            await slots.acquire()
        try:
            return await self._stream(session, request, length, arrival)
        finally:
            if slots is not None:
                slots.release()
            progress(1)

    async def _stream(self, session, request: Request, length: int, arrival: float) -> RequestResult:
        import aiohttp

        times: List[float] = []
        chunks = 0
        usage: Dict[str, Any] = {}
        error = None
        start = now()
        try:
            async with session.post(f"{self.endpoint.url}/v1/completions", json=self._body(request, length)) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:ERROR_BODY_CHARS]
                    error = f"HTTP {resp.status}: {' '.join(text.split())}"
                else:
                    done = False
                    async for raw in resp.content:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        if event.get("error"):
                            error = f"server error in the stream: {event['error']}"
                            break
                        usage = event.get("usage") or usage
                        for choice in event.get("choices") or []:
                            text = choice.get("text") or ""
                            if text:
                                t = now()
                                chunks += 1
                                times.extend([t] * (words_in(text) if self.endpoint.id_words else 1))
                            done = done or bool(choice.get("finish_reason"))
                        done = done or bool(usage)
                    if error is None and not done:
                        error = "the stream ended before the server finished the request"
                    elif error is None and not times:
                        error = "the stream ended with no token"
        except aiohttp.ClientPayloadError as exc:
            error = f"the stream was cut off after {len(times)} tokens ({exc})"
        except asyncio.TimeoutError:
            limit = self.config.server.request_timeout_s
            error = f"TimeoutError: no answer within server.request_timeout_s={limit:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        end = times[-1] if times else now()
        served = int(usage.get("completion_tokens") or 0) if usage else len(times)
        note = None
        if times and served != len(times):
            note = (f"the server streamed {chunks} chunks for {served} tokens: token times are chunk arrivals")
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens,
                             output_tokens=served if error is None else len(times), start_s=start, end_s=end,
                             first_token_s=times[0] if times else None, token_times_s=times or None,
                             timing_note=note, arrival_s=arrival if request.arrival_s is not None else None,
                             output_len_requested=length, error=error)

    def info(self) -> EngineInfo:
        return EngineInfo()
