"""Keep secret environment values (HF_TOKEN, ``*_KEY``, ...) out of everything llem writes or prints.

A secret can reach the config by any route (e.g. ``model.name=${oc.env:HF_TOKEN}``), and from there logs,
console output, Hydra's ``.hydra/*.yaml`` and result rows. So rather than guard each route, llem replaces
the *values* of secret variables with ``<NAME>`` at the exits: log records (:func:`install`), stdout and
stderr (:class:`ScrubbingStream`), result rows (:func:`scrub_value`) and written files (:func:`scrub_tree`).
Stdlib only and cheap to import, so it can be installed before anything else runs.

A value is replaced in every form an exit may have encoded it in (:func:`encodings`): as is, JSON-escaped
(with and without ``ensure_ascii``), ``repr``/backslash-escaped (once or twice), YAML-escaped, URL-quoted and
base64. Structured values (result rows, YAML files) are scrubbed before they are encoded, and text exits scrub
every encoded form.
Credentials in a URL (``scheme://user:password@host``) are replaced by ``<credentials>`` wherever they appear.
Variables named by :func:`protect` (e.g. ``server.api_key_env``) are secrets whatever their name; the names
travel in ``LLEM_SECRET_VARS``, so child processes protect them too.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, List, Tuple, Union

SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
MIN_SECRET_LEN = 6
"""Values shorter than this are not treated as secrets: replacing e.g. "1" or "true" everywhere would mangle
output, and such values (e.g. ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1``) are not credentials anyway."""

PROTECTED_VAR = "LLEM_SECRET_VARS"
"""Comma-separated names of further variables whose values are secrets (set by :func:`protect`; inherited)."""
URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s'\"]+@")
CREDENTIALS = "<credentials>"

_orig_factory = None  # the log record factory install() wrapped; None when not installed


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (the rules: case-insensitive; or protected)."""
    return _matches_rules(name) or name in protected_names()


def _matches_rules(name: str) -> bool:
    upper = name.upper()
    return upper in SECRET_NAMES or upper.endswith(SECRET_SUFFIXES)


def protected_names() -> List[str]:
    """The variables :func:`protect` named, in this process or an ancestor."""
    return [n for n in os.environ.get(PROTECTED_VAR, "").split(",") if n]


def protect(name: str) -> None:
    """Treat the value of variable ``name`` as a secret from now on, here and in child processes."""
    if name not in protected_names():
        os.environ[PROTECTED_VAR] = ",".join([*protected_names(), name])


ESCAPES = (lambda v: json.dumps(v)[1:-1], lambda v: json.dumps(v, ensure_ascii=False)[1:-1], lambda v: repr(v)[1:-1],
           lambda v: v.encode("unicode_escape").decode("ascii"))
"""Backslash escapes that may be applied twice on the way out: a server's JSON quoted in an error message that
is then written as JSON or repr (each composition of two is a form of its own)."""


@functools.lru_cache(maxsize=256)
def encodings(value: str) -> Tuple[str, ...]:
    """The forms of ``value`` an exit may write: as is, JSON-escaped (ASCII or not), repr/backslash-escaped
    (once, or twice in any combination), YAML-escaped, URL-quoted, base64 (padding dropped: it depends on what
    follows); longest first."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
             value.encode("unicode_escape").decode("ascii"), value.encode("ascii", "backslashreplace").decode(),
             value.replace("'", "''"), _yaml_escaped(value),
             urllib.parse.quote(value, safe=""), urllib.parse.quote(value), urllib.parse.quote_plus(value)}
    forms |= {twice(once(value)) for once in ESCAPES for twice in ESCAPES}  # e.g. a quoted error quoted again
    raw = value.encode("utf-8")
    forms |= {base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET_LEN), key=lambda f: (-len(f), f)))


def _yaml_escaped(value: str) -> str:
    """``value`` as YAML writes it inside double quotes (PyYAML's escapes: \\xXX, \\uXXXX, \\UXXXXXXXX)."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in "\\\"":
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif ch in "\n\t\r\0":
            out.append(repr(ch)[1:-1] if ch != "\0" else "\\0")
        elif code <= 0xFF:
            out.append(f"\\x{code:02X}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    return "".join(out)


def secrets() -> List[Tuple[str, str]]:
    """(name, value) of the secret variables in ``os.environ`` now, longest value first.

    Read afresh on every call (a few microseconds), so changes to the environment take effect at once.
    Longest first, so a value that contains another secret is replaced whole.
    """
    found, protected = [], set(protected_names())
    for name in os.environ:  # iterates over a snapshot of the keys: safe if another thread edits os.environ
        if name in protected or _matches_rules(name):
            value = os.environ.get(name)
            if value and len(value) >= MIN_SECRET_LEN:
                found.append((name, value))
    return sorted(found, key=lambda nv: (-len(nv[1]), nv[0]))


def forms(found: Iterable[Tuple[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """(name, form) of every encoded form of the ``found`` secrets, longest form first."""
    return _forms(tuple(found))


@functools.lru_cache(maxsize=64)
def _forms(found: Tuple[Tuple[str, str], ...]) -> Tuple[Tuple[str, str], ...]:
    pairs = [(name, form) for name, value in found for form in encodings(value)]
    return tuple(sorted(pairs, key=lambda nf: (-len(nf[1]), nf[0])))


def _scrub(text: Any, found: List[Tuple[str, str]]) -> Any:
    if not isinstance(text, str):
        return text
    for name, form in forms(found):
        if form in text:
            text = text.replace(form, f"<{name}>")
    if "@" in text:
        text = URL_CREDENTIALS.sub(lambda m: m.group(1) + CREDENTIALS + "@", text)
    return text


def scrub(text: Any) -> Any:
    """``text`` with every secret value replaced by ``<NAME>``; anything but a str is returned unchanged."""
    return _scrub(text, secrets())


def scrub_value(obj: Any) -> Any:
    """Scrub a value recursively: str, and the items of list / tuple / dict (keys too); for result rows."""
    found = secrets()

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
    try:
        message = record.getMessage()
    except Exception:  # bad format args: leave the record as is, so the handler reports the error as usual
        return record
    clean = _scrub(message, found)
    if clean != message:  # a record with nothing to hide keeps its msg and args
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        # Formatter.format() uses exc_text when present instead of formatting exc_info again.
        text = logging.Formatter().formatException(record.exc_info)
        clean = _scrub(text, found)
        if clean != text:
            record.exc_text = clean
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
        data = path.read_bytes()
        if b"\0" in data:
            return False
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    new = _scrub(text, found)
    if path.suffix in (".yaml", ".yml"):
        new = _scrub_yaml(new)
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


def _scrub_yaml(text: str) -> str:
    """YAML text whose parsed values still hold a secret (a form no text scrub knows, e.g. folded over
    lines) dumped again from the scrubbed values; otherwise ``text`` unchanged."""
    try:
        import yaml

        tree = yaml.safe_load(text)
    except Exception:  # not YAML llem can read: the text scrub is all it gets
        return text
    clean = scrub_value(tree)
    if clean == tree:
        return text
    return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, width=1 << 30)


def scrub_tree(folder: Union[str, Path], patterns: Iterable[str] = ("*.yaml", "*.log", "*.txt", "*.json")
               ) -> List[Path]:
    """:func:`scrub_file` every file under ``folder`` (recursive) matching ``patterns``; return those rewritten.

    For what Hydra writes (``.hydra/*.yaml``, ``multirun.yaml``, job logs) and llem's own text outputs.
    """
    files = {p for pattern in patterns for p in Path(folder).rglob(pattern) if p.is_file()}
    return [p for p in sorted(files) if scrub_file(p)]
