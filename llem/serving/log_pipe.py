"""A launched server's output, scrubbed of secrets line by line on its way to its log file.

The server writes into a pipe read by a small process of its own (``python -m llem.serving.log_pipe PATH``)
that scrubs each line (:mod:`llem.support.secrets`, every encoded form) and appends it to the file at once. So the
file never holds a secret, even for a moment and even when llem is killed: the pipe process is in its own
session (a Ctrl-C or the driver's death does not stop it), reads until the server closes its output (the
server dies with the driver), and exits then. It reads continuously, so the server never blocks on a full
pipe; a line longer than ``MAX_LINE_BYTES`` is written in pieces, each scrubbed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Union

MAX_LINE_BYTES = 1 << 20
STOP_WAIT_S = 10.0  # how long stop() waits for the pipe to drain once the server is gone


def start(path: Union[str, Path]) -> subprocess.Popen:
    """The pipe process appending to ``path``; hand its ``stdin`` to the server as stdout, then close it here."""
    package_root = str(Path(__file__).resolve().parents[2])  # this llem, wherever the driver imported it from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "llem.serving.log_pipe", str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def copy(source: BinaryIO, target: BinaryIO) -> None:
    """Each line of ``source`` scrubbed into ``target``, flushed line by line, until end of file."""
    from llem.support import secrets

    while True:
        line = source.readline(MAX_LINE_BYTES)
        if not line:
            return
        try:
            clean = secrets.scrub(line.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        except Exception as exc:  # never pass a line on unscrubbed, never stop reading (the server would block)
            clean = f"<a line of {len(line)} bytes left out: {type(exc).__name__}>\n".encode()
        target.write(clean)
        target.flush()


def main(path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ends when the server's output ends, not before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(path, "ab") as target:
        copy(os.fdopen(sys.stdin.fileno(), "rb", closefd=False), target)


if __name__ == "__main__":
    main(sys.argv[1])
