"""A stand-in OpenAI-compatible server for the client's error paths (500s, dropped streams, timeouts,
text-only prompts), in a thread of the test process. Real serving is tested against transformers serve."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Optional


class StandIn:
    """``mode``: ok | fail500 | drop (two tokens, then the connection closes) | slow (never answers)."""

    def __init__(self, mode: str = "ok", tokens_only: bool = False, delay_s: float = 0.005) -> None:
        self.mode, self.tokens_only, self.delay_s = mode, tokens_only, delay_s
        self.in_flight = self.most_in_flight = 0
        self.bodies = []
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
            return web.json_response({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

        async def completions(request):
            body = await request.json()
            self.bodies.append(body)
            self.authorization.append(request.headers.get("Authorization"))
            if isinstance(body["prompt"], list) and self.tokens_only:
                return web.json_response({"detail": "prompt must be a string."}, status=400)
            if self.mode == "fail500":
                return web.Response(status=500, text="internal error: out of blocks")
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                if self.mode == "slow":
                    await asyncio.sleep(3)  # past the test's 1 s request timeout
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                n = int(body["max_tokens"])
                for i in range(n):
                    await asyncio.sleep(self.delay_s)
                    chunk = {"choices": [{"index": 0, "text": f" t{i + 10}"}]}
                    await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    if self.mode == "drop" and i == 1:
                        request.transport.close()
                        return resp
                await resp.write(b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\n\n')
                usage = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 3}}
                await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                return resp
            finally:
                self.in_flight -= 1

        async def main():
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_get("/v1/models", models)
            app.router.add_get("/health", models)
            app.router.add_post("/v1/completions", completions)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())
