"""The Hugging Face Hub as llem asks it before anything loads: its endpoint, and one HEAD request bounded
in time as a whole (a name lookup that hangs included), so a closed network costs a second, not the
minutes of retries a library would spend. Only the standard library is used."""

from __future__ import annotations

import http.client
import os
import threading
import urllib.error
import urllib.request
from typing import Dict, Optional, Tuple

ENDPOINT = "https://huggingface.co"


def endpoint() -> str:
    """The Hub's address: HF_ENDPOINT, else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", ENDPOINT).rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer: the thing is there
        return None


def head(url: str, timeout_s: float, headers: Optional[Dict[str, str]] = None
         ) -> Tuple[Optional[int], Optional[str]]:
    """(HTTP status, None) when the server answered (redirects not followed); (None, why) when it did not:
    the network error, or no answer within ``timeout_s`` (the request runs in a thread given up on then)."""
    answer: list = []

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "llem", **(headers or {})})
        try:
            with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout_s) as response:
                answer.append((response.status, None))
        except urllib.error.HTTPError as exc:
            answer.append((exc.code, None))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            why = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
            answer.append((None, why))

    thread = threading.Thread(target=ask, name="llem-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return answer[0] if answer else (None, f"no answer within {timeout_s:g} s")
