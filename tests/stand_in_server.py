"""A stand-in OpenAI-compatible server for the client's error paths (500s, dropped streams, timeouts,
text-only prompts, malformed replies, wrong token counts), in a thread of the test process, on both APIs:
``/v1/completions`` and ``/v1/chat/completions`` (chat chunks: a first one with ``delta.role`` alone, then
``delta.content``). Real serving is tested against transformers serve."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Optional


class StandIn:
    """``mode``: ok | fail500 | busy (HTTP 429, Retry-After) | denied (HTTP 401) | drop (two tokens, then the
    connection closes) | slow (a measured request is answered after 3 s; the one-token probe of how prompts go
    at once) | fail_endless (HTTP 500 whose body never ends) |
    moved (HTTP 307 to /elsewhere, which streams well).
    ``bad``: how every ``bad_every``-th request (by arrival, from the first) misbehaves, the others answered
    well: ``event`` (``bad_line`` sent as one line of its stream, after a token), ``json_body`` (a plain JSON
    completion, as a server ignoring stream=true answers), ``html`` (an HTML error page with status 200),
    ``trickle`` (keep-alive comments every ``delay_s``, never a token), ``endless`` (after a token, 1 MiB
    writes with no line break, without end), ``count`` (``usage.completion_tokens``
    = ``count``; with ``streamed``, that many tokens are streamed). ``models``: the /v1/models answer, as raw
    bytes (None: a well-formed list). ``split_s`` > 0: each token's event is written in two halves, cut
    mid-line, that far apart. A chat request's length is its ``max_completion_tokens``."""

    def __init__(self, mode: str = "ok", tokens_only: bool = False, delay_s: float = 0.005, bad: str = "",
                 bad_every: int = 1, bad_line: bytes = b"", count=None, streamed: Optional[int] = None,
                 models: Optional[bytes] = None, split_s: float = 0.0) -> None:
        self.mode, self.tokens_only, self.delay_s = mode, tokens_only, delay_s
        self.bad, self.bad_every, self.bad_line, self.count, self.streamed = bad, bad_every, bad_line, count, streamed
        self.models, self.split_s = models, split_s
        self.served = 0
        self.in_flight = self.most_in_flight = 0
        self.bodies = []
        self.paths = []  # the path every completion request was posted to
        self.authorization = []  # the Authorization header of every request (None: none sent)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        from aiohttp import web

        async def models(request):
            self.authorization.append(request.headers.get("Authorization"))
            if self.models is not None:
                return web.Response(body=self.models, content_type="text/html")
            return web.json_response({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

        async def completions(request):
            body = await request.json()
            self.bodies.append(body)
            self.authorization.append(request.headers.get("Authorization"))
            chat = request.path.endswith("/chat/completions")
            self.paths.append(request.path)
            if chat and not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in body["messages"]):
                return web.json_response({"detail": "a message's content must be a string."}, status=400)
            if isinstance(body.get("prompt"), list) and self.tokens_only:
                return web.json_response({"detail": "prompt must be a string."}, status=400)
            if self.mode == "fail500":
                return web.Response(status=500, text="internal error: out of blocks")
            if self.mode == "moved" and not request.path.startswith("/elsewhere/"):
                raise web.HTTPTemporaryRedirect("/elsewhere" + request.path)
            if self.mode == "fail_endless":
                resp = web.StreamResponse(status=500)
                await resp.prepare(request)
                while True:
                    await resp.write(b"e" * (1 << 20))
            if self.mode == "busy":
                return web.Response(status=429, headers={"Retry-After": "3600"}, text="rate limited")
            if self.mode == "denied":
                return web.json_response({"error": "invalid api key"}, status=401)
            asked = int(body["max_completion_tokens"] if chat else body["max_tokens"])
            bad = self.bad if asked > 1 and self.served % self.bad_every == 0 else ""
            self.served += asked > 1  # the one-token prompt-kind probe is not counted
            if bad == "json_body":
                reply = {"message": {"role": "assistant", "content": " t1 t2"}} if chat else {"text": " t1 t2"}
                return web.json_response({"choices": [{"index": 0, **reply, "finish_reason": "length"}],
                                          "usage": {"completion_tokens": 2}})
            if bad == "html":
                return web.Response(text="<html>\n<body>502 Bad Gateway</body>\n</html>\n", content_type="text/html")
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                if self.mode == "slow" and asked > 1:
                    await asyncio.sleep(3)  # past the test's 1 s request timeout
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                if bad == "trickle":
                    while True:
                        await asyncio.sleep(self.delay_s)
                        await resp.write(b": keep-alive\n\n")
                count = self.count if bad == "count" else asked
                if chat:  # the role first, with no token
                    await resp.write(b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n')
                for i in range(self.streamed if bad == "count" and self.streamed is not None else asked):
                    await asyncio.sleep(self.delay_s)
                    text = f" t{i + 10}"
                    chunk = {"choices": [{"index": 0, **({"delta": {"content": text}} if chat else {"text": text})}]}
                    event = f"data: {json.dumps(chunk)}\n\n".encode()
                    if self.split_s:
                        await resp.write(event[:12])
                        await asyncio.sleep(self.split_s)
                        event = event[12:]
                    await resp.write(event)
                    if self.mode == "drop" and i == 1:
                        request.transport.close()
                        return resp
                    while bad == "endless":
                        await resp.write(b"data: " + b"x" * (1 << 20))
                    if bad == "event" and i == 0:
                        await resp.write(self.bad_line + b"\n\n")
                last = {"index": 0, **({"delta": {}} if chat else {"text": ""}), "finish_reason": "length"}
                await resp.write(f"data: {json.dumps({'choices': [last]})}\n\n".encode())
                usage = {"choices": [], "usage": {"completion_tokens": count, "prompt_tokens": 3}}
                await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                return resp
            finally:
                self.in_flight -= 1

        async def main():
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_get("/v1/models", models)
            app.router.add_get("/health", models)
            for path in ("/v1/completions", "/v1/chat/completions"):
                app.router.add_post(path, completions)
                app.router.add_post("/elsewhere" + path, completions)
            runner = web.AppRunner(app, shutdown_timeout=0.2)  # at exit, a handler still asleep is cancelled
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())
