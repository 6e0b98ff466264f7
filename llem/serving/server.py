"""What the job's parent and the client know of an OpenAI-compatible server, launched or external: the
:class:`Endpoint` the measurement process is handed, the headers every request carries, the model list a
server answers, its last log lines and whether its process is alive.

Where a server comes from is llem.deploy: launched and held by the driver (llem.deploy.server_process), or
external, which must answer ``/v1/models`` within ``CHECK_TIMEOUT_S`` at the check (:func:`check_external`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from llem.support.errors import ServerError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.5  # server.url must answer within this at the check
LOG_TAIL_LINES = 30  # a failed row carries this many of the server's last log lines
MODELS_MAX_BYTES = 64 << 20  # a /v1/models answer past this is read no further (50,000 models take ~3 MB)


@dataclass
class Endpoint:
    """What the measurement process needs to reach a server (picklable)."""

    url: str
    mode: str  # launch | external
    prompt: str  # auto | token_ids | text
    id_words: bool = False
    model_name: Optional[str] = None
    pid: Optional[int] = None  # launch: the server's process (the client checks it is alive)
    log_path: Optional[str] = None
    command: Optional[str] = None
    start_s: Optional[float] = None  # how long this job waited for it to answer (None: reused or external)
    reused: bool = False
    starts: int = 0  # servers started by this driver so far
    warnings: List[str] = field(default_factory=list)  # what the server does not take of the job's settings
    max_in_flight: Optional[int] = None  # sequences the server runs at once, where llem knows it
    max_in_flight_null_reason: Optional[str] = None
    container: Any = None  # the container it runs in (llem.results.preparation.ContainerFacts), if any


def auth_headers(server) -> Dict[str, str]:
    """The headers every request to the server carries: ``Authorization: Bearer <value>`` of the variable
    ``server.api_key_env`` names (none without it). The value is read here, never stored in the config."""
    name = getattr(server, "api_key_env", None)
    value = os.environ.get(name) if name else None
    return {"Authorization": f"Bearer {value}"} if value else {}


def _get(url: str, timeout_s: float, headers: Optional[Dict[str, str]] = None) -> Any:
    """The JSON a GET answers, within ``timeout_s`` as a whole: urllib's timeout bounds each read, so a server
    that trickles its answer a byte at a time would hold the check without end; the read runs in a daemon
    thread that is left behind when the time is up. At most ``MODELS_MAX_BYTES`` of the body are read."""
    box: Dict[str, Any] = {}

    def fetch() -> None:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - the user's own server
                box["body"] = resp.read(MODELS_MAX_BYTES)
        except Exception as exc:  # raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=fetch, name="llem-get", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"its answer was not complete after {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return json.loads(box["body"] or b"null")


def model_names(models: Any, url: str) -> List[str]:
    """The model ids of a ``/v1/models`` answer (``{"data": [{"id": ...}, ...]}``); ServerError naming
    server.url when the answer is not of that shape."""
    data = models.get("data") if isinstance(models, dict) else None
    names = [m.get("id") if isinstance(m, dict) else None for m in data] if isinstance(data, list) else [None]
    if not all(isinstance(n, str) and n for n in names):
        shown = " ".join(json.dumps(models)[:200].split())
        raise ServerError(f"server.url={url!r} answered GET /v1/models with {shown}, not an OpenAI model list "
                          "({\"data\": [{\"id\": \"<name>\"}, …]}, ids strings): is it an OpenAI-compatible server?")
    return names


def check_external(url: str, headers: Optional[Dict[str, str]] = None) -> List[str]:
    """The model names an external server lists; ServerError within CHECK_TIMEOUT_S if it does not answer."""
    base = url.rstrip("/")
    t0 = time.monotonic()
    try:
        models = _get(f"{base}/v1/models", CHECK_TIMEOUT_S, headers)
    except urllib.error.HTTPError as exc:
        raise ServerError(f"server.url={url!r} answered GET /v1/models with HTTP {exc.code}: is it an "
                          "OpenAI-compatible server?") from None
    except ValueError as exc:
        raise ServerError(f"server.url={url!r} answered GET /v1/models with something that is not JSON ({exc}): "
                          "is it an OpenAI-compatible server?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"server.url={url!r} did not answer GET /v1/models within {CHECK_TIMEOUT_S:g} s "
                          f"({reason}; {time.monotonic() - t0:.1f} s): start the server first, or check the "
                          "URL") from None
    return model_names(models, url)


def last_lines(path: Optional[str], n: int = LOG_TAIL_LINES, start: int = 0) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n:])


def alive(pid: Optional[int]) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


