"""The HTTP client that stands in for an engine when a server serves the requests (server=launch/external).

It is an :class:`Engine` to the measurement protocol: ``load`` finds the served model and how it takes
prompts, ``generate`` sends every request to ``POST /v1/completions`` at its arrival time (aiohttp,
streamed server-sent events, ``stream_options.include_usage``) with at most ``load.max_concurrency`` in
flight. Per request: arrival (when it was due and the client woke for it), start of service (sent),
the time of every streamed chunk that carried text, the end, and the tokens credited: the server's
``usage.completion_tokens`` checked against the length asked for and the tokens streamed, never more than
asked (:mod:`llem.serving.stream` reads the stream and says how). An HTTP error, a malformed reply, a
dropped stream or a wait past ``server.connect_timeout_s``, ``server.chunk_timeout_s`` or
``server.request_timeout_s`` is the request's ``error``: recorded, never dropped, the other requests measured.

Prompts go as token ids where the server takes them (``server.prompt=auto`` asks once with a one-token
request), as text otherwise: the request's own text, or its ids as id-words when the server's tokenizer
is llem's (random weights; :mod:`llem.backends._served_model`), so the work is the same token for token.
Chunks are not always tokens: with the id-word tokenizer each word of a chunk is one token; elsewhere
each chunk is stamped once and the request's ``timing_note`` says so when their count differs from
the tokens credited.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Dict, List, Optional, Sequence

from llem.backends._served_model import id_words
from llem.backends.base import Engine, EngineInfo, installed
from llem.config import BackendConfig, Config
from llem.errors import EngineUnavailable, ServerError, WorkloadError
from llem.records import Progress, Request, RequestResult, now
from llem.serving.server import Endpoint, alive, last_lines, model_names
from llem.serving.stream import StreamParser

log = logging.getLogger(__name__)

ERROR_BODY_CHARS = 300
DISCOVER_TIMEOUT_S = 30.0  # the model list and the prompt-kind probe, each


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
            raise EngineUnavailable("server mode needs aiohttp: pip install 'llem[serving]'")

    def load(self) -> None:
        asyncio.run(self._discover())

    async def _discover(self) -> None:
        import aiohttp

        url = self.endpoint.url
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DISCOVER_TIMEOUT_S)) as session:
                if self.model_name is None:
                    async with session.get(f"{url}/v1/models") as resp:
                        body = await resp.read()
                    try:
                        names = model_names(json.loads(body or b"null"), url)
                    except ValueError:
                        raise ServerError(f"server.url={url!r} answered GET /v1/models with something that is not "
                                          f"JSON (HTTP {resp.status}): is it an OpenAI-compatible server?") from None
                    if not names:
                        raise ServerError(f"server.url={url!r}: /v1/models lists no model: set server.model_name")
                    self.model_name = names[0]
                if self.prompt == "auto":  # one token, asked as token ids: a 4xx means text only
                    body = {"model": self.model_name, "prompt": [1, 2, 3], "max_tokens": 1}
                    async with session.post(f"{url}/v1/completions", json=body) as resp:
                        self.prompt = "token_ids" if resp.status == 200 else "text"
                        await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServerError(f"server.url={url!r} failed while llem asked for its model and how it takes prompts "
                              f"({DISCOVER_TIMEOUT_S:g} s per question): {type(exc).__name__}: {exc}") from None
        log.info("server %s serves %s; prompts sent as %s", url, self.model_name, self.prompt)

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

        bounds = self.config.server
        parser = StreamParser(self.endpoint.id_words)
        error = None
        start = now()
        watch = _Watch(start + bounds.request_timeout_s)
        watch.arm("connect_timeout_s", start + bounds.connect_timeout_s)
        try:
            async with session.post(f"{self.endpoint.url}/v1/completions", json=self._body(request, length)) as resp:
                if resp.status != 200:
                    text = (await resp.text(errors="replace"))[:ERROR_BODY_CHARS]
                    error = f"HTTP {resp.status}: {' '.join(text.split())}"
                else:
                    last = now()  # the wait for the first event that carries text counts from the headers
                    watch.arm("chunk_timeout_s", last + bounds.chunk_timeout_s)
                    async for raw in resp.content:
                        if parser.line(raw, now()):
                            break
                        if parser.last_token_s is not None and parser.last_token_s != last:
                            last = parser.last_token_s
                            watch.arm("chunk_timeout_s", last + bounds.chunk_timeout_s)
        except asyncio.CancelledError:
            if watch.expired is None:
                raise
            watch.forget()
            error = f"TimeoutError: past server.{watch.expired}={getattr(bounds, watch.expired):g} s"
        except aiohttp.ClientPayloadError as exc:
            error = f"the stream was cut off after {len(parser.times)} tokens ({exc})"
        except asyncio.TimeoutError:
            error = f"TimeoutError: past server.request_timeout_s={bounds.request_timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            watch.disarm()
        outcome = parser.result(length)
        times = parser.times
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens,
                             output_tokens=outcome.output_tokens, start_s=start,
                             end_s=times[-1] if times else now(), first_token_s=times[0] if times else None,
                             token_times_s=times or None, timing_note=outcome.timing_note,
                             arrival_s=arrival if request.arrival_s is not None else None,
                             output_len_requested=length, error=error or outcome.error,
                             token_count_note=outcome.token_note)

    def info(self) -> EngineInfo:
        return EngineInfo()


class _Watch:
    """The bound a request's current wait runs under, as one timer: when it runs out the request's task is
    cancelled and ``expired`` names the key. Re-arming costs a timer, not a task, so it is done per event
    that carries text, never per line. A bound past the request's deadline is server.request_timeout_s."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.expired: Optional[str] = None
        self._timer = None

    def arm(self, key: str, at: float) -> None:
        if at >= self.deadline:
            key, at = "request_timeout_s", self.deadline
        self.disarm()
        self._timer = self.loop.call_later(max(at - now(), 0.0), self._expire, key)

    def _expire(self, key: str) -> None:
        self.expired = key
        self.task.cancel()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def forget(self) -> None:
        """The cancellation was this watch's own: the task is not being cancelled (Python >= 3.11 counts)."""
        if hasattr(self.task, "uncancel"):
            self.task.uncancel()
