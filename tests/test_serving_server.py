"""The server lifecycle, against small stand-in processes: a server that fails to start says why with its
log; servers are reused by key and stopped; a secret a server prints never stays in its log; an unreachable
server.url fails its check in under 2 s; a port in use, or claimed by another llem process, is avoided."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from llem.backends.base import ServerLaunch
from llem.config import to_config
from llem.deploy import server_process as srv
from llem.deploy.held import Held
from llem.serving.server import alive, check_external
from llem.support import locks
from llem.support.errors import ServerError


def test_unreachable_url_fails_the_check_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="did not answer"):
            check_external(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    with pytest.raises(ServerError):
        check_external("http://10.255.255.1:9")  # never routed: only the timeout ends it
    assert time.monotonic() - t0 < 2.0


def test_a_port_in_use_is_avoided():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        chosen, claim = srv.free_port("127.0.0.1", port)
        os.close(claim)
        assert chosen != port


def test_a_port_another_llem_process_claimed_is_avoided_until_it_lets_go():
    """Nothing listens on a port while a server starts up: the claim, not the port, keeps two llem processes
    choosing at once apart (seen: two test workers' transformers serve both bound to 8000, one failed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once this block ends
    other = locks.port_lock(port)  # another llem process's claim (a second open file: flock refuses it as well)
    assert other is not None
    try:
        chosen, claim = srv.free_port("127.0.0.1", port)
        os.close(claim)
        assert chosen != port
        assert locks.port_lock(port) is None
    finally:
        os.close(other)
    chosen, claim = srv.free_port("127.0.0.1", port)
    os.close(claim)
    assert chosen == port


class _FakeServing:
    def __init__(self, argv):
        self.argv = argv

    def served_model(self, root):
        return None

    def command(self, model_dir, host, port):
        return ServerLaunch(argv=[*self.argv, "--port", str(port)])


def test_a_server_that_fails_to_start_says_why(compose_cfg, tmp_path):
    config = to_config(compose_cfg(["server=launch", "server.startup_timeout_s=20"]))
    crash = [sys.executable, "-c", "import sys; print('CUDA out of memory while loading'); sys.exit(3)"]
    held = Held()
    with pytest.raises(ServerError, match="(?s)exited with code 3.*CUDA out of memory") as err:
        srv.launch(_FakeServing(crash), config, tmp_path, [], held)
    assert "CUDA out of memory" in str(err.value) and held.resident is None


def test_servers_are_reused_by_key_and_stopped(compose_cfg, tmp_path):
    code = ("import sys,http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n"
            "  s.send_response(200); s.end_headers(); s.wfile.write(b'{}')\n"
            "h.HTTPServer(('127.0.0.1', int(sys.argv[-1])), H).serve_forever()")
    config = to_config(compose_cfg(["server=launch", "server.port=18500"]))
    calls = []
    held = Held()
    try:
        first = srv.launch(_FakeServing([sys.executable, "-c", code]), config, tmp_path, [], held,
                           lambda: calls.append(1))
        again = srv.launch(_FakeServing([sys.executable, "-c", code]), config, tmp_path, [], held,
                           lambda: calls.append(2))
        assert first.start_s is not None and again.reused and again.url == first.url and calls == [1]
        other = srv.launch(_FakeServing([sys.executable, "-c", code, "x"]), config, tmp_path, [], held,
                           lambda: calls.append(3))
        assert not other.reused and other.pid != first.pid and calls == [1, 3] and not alive(first.pid)
        assert held.pids() == [other.pid] and held.server_starts == 2
    finally:
        held.stop_all()
    assert held.resident is None and not alive(other.pid)


def test_a_secret_the_server_prints_never_stays_in_its_log(compose_cfg, tmp_path, monkeypatch):
    secret = "hf_ServerSideSecret123"
    monkeypatch.setenv("HF_TOKEN", secret)
    code = ("import os,sys,http.server as h\nprint('token', os.environ['HF_TOKEN'], flush=True)\n"
            "class H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n"
            "  s.send_response(200); s.end_headers(); s.wfile.write(b'{}')\n"
            "h.HTTPServer(('127.0.0.1', int(sys.argv[-1])), H).serve_forever()")
    config = to_config(compose_cfg(["server=launch", "server.port=18600"]))
    held = Held()
    try:
        endpoint = srv.launch(_FakeServing([sys.executable, "-c", code]), config, tmp_path, [], held,
                              log_name="server.log")
    finally:
        held.stop_all()
    text = (tmp_path / "server.log").read_text()
    assert endpoint.log_path == str(tmp_path / "server.log") and "token <HF_TOKEN>" in text and secret not in text
