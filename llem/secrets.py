"""Keep secret environment values (HF_TOKEN, ``*_KEY``, ...) out of everything llem writes or prints.

A secret can reach the config by any route (e.g. ``model.name=${oc.env:HF_TOKEN}``), and from there logs,
console output, Hydra's ``.hydra/*.yaml`` and result rows. So rather than guard each route, llem replaces
the *values* of secret variables with ``<NAME>`` at the exits: log records (:func:`install`), stdout and
stderr (:class:`ScrubbingStream`), result rows (:func:`scrub_value`) and written files (:func:`scrub_tree`).
Stdlib only and cheap to import, so it can be installed before anything else runs.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Tuple, Union

SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
MIN_SECRET_LEN = 6
"""Values shorter than this are not treated as secrets: replacing e.g. "1" or "true" everywhere would mangle
output, and such values (e.g. ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1``) are not credentials anyway."""

_orig_factory = None  # the log record factory install() wrapped; None when not installed


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (case-insensitive)."""
    name = name.upper()
    return name in SECRET_NAMES or name.endswith(SECRET_SUFFIXES)


def secrets() -> List[Tuple[str, str]]:
    """(name, value) of the secret variables in ``os.environ`` now, longest value first.

    Read afresh on every call (a few microseconds), so changes to the environment take effect at once.
    Longest first, so a value that contains another secret is replaced whole.
    """
    found = []
    for name in os.environ:  # iterates over a snapshot of the keys: safe if another thread edits os.environ
        if is_secret_name(name):
            value = os.environ.get(name)
            if value and len(value) >= MIN_SECRET_LEN:
                found.append((name, value))
    return sorted(found, key=lambda nv: (-len(nv[1]), nv[0]))


def _scrub(text: Any, found: List[Tuple[str, str]]) -> Any:
    if not isinstance(text, str):
        return text
    for name, value in found:
        if value in text:
            text = text.replace(value, f"<{name}>")
    return text


def scrub(text: Any) -> Any:
    """``text`` with every secret value replaced by ``<NAME>``; anything but a str is returned unchanged."""
    return _scrub(text, secrets())


def scrub_value(obj: Any) -> Any:
    """Scrub a value recursively: str, and the items of list / tuple / dict (keys too); for result rows."""
    found = secrets()
    if not found:
        return obj

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {walk(k): walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, tuple):
            return tuple(walk(v) for v in o)
        return _scrub(o, found)

    return walk(obj)


class ScrubbingStream:
    """Text stream that scrubs every ``write`` and delegates everything else to the stream it wraps.

    Scrubbing is per call: a secret split across two ``write`` calls would pass. print(), logging, tracebacks
    and tqdm write whole messages or lines, so that does not happen in practice.
    Bytes written to ``.buffer`` or to the file descriptor bypass it.
    """

    def __init__(self, wrapped):
        self._wrapped = wrapped

    def write(self, s: str) -> int:
        self._wrapped.write(scrub(s))
        return len(s)  # what the caller passed was consumed, whatever the scrubbed length

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        if name == "_wrapped":  # not yet set (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __repr__(self) -> str:
        return f"ScrubbingStream({self._wrapped!r})"


def _scrubbing_factory(*args, **kwargs) -> logging.LogRecord:
    """Make a record with the wrapped factory, then scrub its message, traceback and stack at creation."""
    record = _orig_factory(*args, **kwargs)
    found = secrets()
    if not found:
        return record
    try:
        message = record.getMessage()
    except Exception:  # bad format args: leave the record as is, so the handler reports the error as usual
        return record
    record.msg, record.args = _scrub(message, found), ()
    if record.exc_info and not record.exc_text:
        # Formatter.format() uses exc_text when present instead of formatting exc_info again.
        record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info), found)
    record.stack_info = _scrub(record.stack_info, found)
    return record


def install() -> None:
    """Scrub every log record at creation and everything written to sys.stdout / sys.stderr. Idempotent.

    The stderr wrapper also covers uncaught exceptions (sys.excepthook prints to sys.stderr), warnings,
    tqdm and Hydra's own error printing. Streams replaced after install() are wrapped by calling it again.
    Only this process: child processes (e.g. engine workers) must call it themselves.
    """
    global _orig_factory
    if _orig_factory is None:
        _orig_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_scrubbing_factory)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbingStream):
            setattr(sys, name, ScrubbingStream(stream))


def uninstall() -> None:
    """Undo :func:`install` (for tests): restore the record factory and unwrap sys.stdout / sys.stderr."""
    global _orig_factory
    if _orig_factory is not None:
        logging.setLogRecordFactory(_orig_factory)
        _orig_factory = None
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, ScrubbingStream):
            setattr(sys, name, stream._wrapped)


def scrub_file(path: Union[str, Path]) -> bool:
    """Rewrite a UTF-8 text file in place, atomically, if it holds a secret value; return whether it did.

    Binary (NUL bytes) or undecodable files are left alone; untouched files keep their bytes and mtime.
    Call it once the file's writer is done: a writer still holding it open (e.g. a live log handler) would
    go on writing to the replaced file, and those lines would be lost.
    """
    path, found = Path(path), secrets()
    try:
        data = path.read_bytes() if found else b"\0"
        if b"\0" in data:
            return False
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    new = _scrub(text, found)
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new.encode("utf-8"))
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def scrub_tree(folder: Union[str, Path], patterns: Iterable[str] = ("*.yaml", "*.log", "*.txt", "*.json")
               ) -> List[Path]:
    """:func:`scrub_file` every file under ``folder`` (recursive) matching ``patterns``; return those rewritten.

    For what Hydra writes (``.hydra/*.yaml``, ``multirun.yaml``, job logs) and llem's own text outputs.
    """
    if not secrets():
        return []
    files = {p for pattern in patterns for p in Path(folder).rglob(pattern) if p.is_file()}
    return [p for p in sorted(files) if scrub_file(p)]
