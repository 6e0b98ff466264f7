"""The HTTP client on its error paths, against a stand-in server: HTTP errors, malformed replies, dropped
streams and timeouts are recorded per request, never dropped; arrivals, due times and the concurrency cap
are honoured; a server that dies while measured fails the window with its log."""

from __future__ import annotations

import socket
import sys
import threading
import time

import numpy as np
import pytest

from llem.config import to_config
from llem.serving import server as srv
from llem.serving.client import ServerEngine
from llem.serving.server import Endpoint
from llem.support.errors import ServerError, WorkloadError
from llem.workload.arrivals import shape
from llem.workload.records import Request
from tests.stand_in_server import StandIn

pytest.importorskip("aiohttp")


def _client(compose_cfg, url, overrides=(), prompt="auto", id_words=True, pid=None):
    config = to_config(compose_cfg(["server=external", f"server.url={url}", *overrides]))
    engine = ServerEngine(config, "cpu", Endpoint(url=url, mode="external", prompt=prompt, id_words=id_words,
                                                  pid=pid), lambda n: {"ignore_eos": True, "min_tokens": n})
    engine.load()
    return engine, config


def _bad_then_good(compose_cfg, stand_in, bound):
    """Two requests one after the other against ``stand_in`` (its first misbehaves), under ``bound``: the
    results and how long the client took."""
    with stand_in as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4", "load.max_concurrency=1", bound])
        t0 = time.monotonic()
        out = engine.generate(_requests(config, 2), None, lambda n: None)
        return out, time.monotonic() - t0


def _requests(config, n):
    reqs = [Request(i, [5, 6, 7]) for i in range(n)]
    shape(reqs, config)
    return reqs


def test_arrivals_concurrency_and_timing(compose_cfg):
    with StandIn(delay_s=0.02) as server:
        engine, config = _client(compose_cfg, server.url, ["load.request_rate=40", "load.max_concurrency=2",
                                                           "output_len=8"])
        out = engine.generate(_requests(config, 24), None, lambda n: None)
    assert all(r.error is None and r.output_tokens == 8 and len(r.token_times_s) == 8 for r in out)
    assert server.most_in_flight <= 2  # load.max_concurrency
    assert engine.prompt == "token_ids" and server.bodies[-1]["prompt"] == [5, 6, 7]
    assert server.bodies[-1]["ignore_eos"] is True and server.bodies[-1]["stream"] is True
    arrivals = np.array(sorted(r.arrival_s for r in out))
    assert np.diff(arrivals).mean() == pytest.approx(1 / 40, rel=0.25)
    queued = [r.start_s - r.arrival_s for r in out]
    assert max(queued) > 0.01  # with two slots, arrivals waited for one
    assert all(r.first_token_s > r.start_s >= r.arrival_s for r in out)


def test_requests_carry_the_decoding_the_in_process_engines_use(compose_cfg):
    """Greedy (the default): temperature 0 and no seed, top_p or top_k, as vLLM's in-process engine is asked;
    sampled: the sampling keys and the job's seed."""
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=2"])
        engine.generate(_requests(config, 1), None, lambda n: None)
        greedy = server.bodies[-1]
        engine, config = _client(compose_cfg, server.url, ["output_len=2", "decoding.temperature=0.7",
                                                           "decoding.top_k=5", "seed=3"])
        engine.generate(_requests(config, 1), None, lambda n: None)
        sampled = server.bodies[-1]
    assert greedy["temperature"] == 0 and not {"seed", "top_p", "top_k"} & set(greedy)
    assert sampled["temperature"] == 0.7 and sampled["seed"] == 3 and sampled["top_k"] == 5 and "top_p" in sampled


def test_text_only_server_gets_id_words(compose_cfg):
    with StandIn(tokens_only=True) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4"])
        out = engine.generate(_requests(config, 3), None, lambda n: None)
    assert engine.prompt == "text" and server.bodies[-1]["prompt"] == "t5 t6 t7"
    assert all(r.error is None and r.output_tokens == 4 for r in out)


@pytest.mark.parametrize("mode, expect", [("fail500", "HTTP 500: internal error: out of blocks"),
                                          ("drop", "stream"), ("slow", "Timeout")])
def test_errors_are_recorded_per_request(compose_cfg, mode, expect):
    with StandIn(mode=mode) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=6", "server.request_timeout_s=1"],
                                 prompt="token_ids")
        t0 = time.monotonic()
        out = engine.generate(_requests(config, 4), None, lambda n: None)
        assert time.monotonic() - t0 < 10
    assert len(out) == 4 and all(expect in (r.error or "") for r in out), [r.error for r in out]


def test_a_failed_request_is_a_row_and_a_flag(compose_cfg):
    from llem.measure.load_metrics import load_part
    from llem.measure.metrics import latency_summary, request_rows

    with StandIn(mode="fail500") as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=6", "+objective.bounds.ttft_ms_p99='<=500'"],
                                 prompt="token_ids")
        reqs = _requests(config, 3)
        out = engine.generate(reqs, None, lambda n: None)
    rows = request_rows(out, min(r.start_s for r in out))
    part, flags = load_part(out, rows, 1.0, config)
    assert part.num_requests_failed == 3 and part.goodput_pct == 0.0 and [f.code for f in flags] == ["requests_failed"]
    assert all(r.error.startswith("HTTP 500") for r in rows) and latency_summary(rows).ttft_ms_p50 is None


def test_a_server_that_died_fails_the_window(compose_cfg, tmp_path):
    import subprocess

    log = tmp_path / "server.log"
    log.write_text("loading\nKilled: out of memory\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=2"], pid=dead.pid)
        engine.endpoint.log_path = str(log)
        with pytest.raises(ServerError, match="(?s)died while it was measured.*out of memory"):
            engine.generate(_requests(config, 2), None, lambda n: None)


def test_an_external_server_measured_as_a_job(compose_cfg, tmp_path):
    """server=external through a whole job (in-process): the server's facts in the row, its requests timed."""
    from tests.conftest import run_in_process

    with StandIn() as server:
        row = run_in_process(compose_cfg, ["server=external", f"server.url={server.url}", "load.request_rate=50",
                                           "+objective.bounds.ttft_ms_p99='<=1000'"], tmp_path / "job")
    assert row["status"] == "ok", row["error"]
    assert row["server_mode"] == "external" and row["server_url"] == server.url and row["server_prompt"] == "token_ids"
    assert row["num_server_starts"] is None and row["target_requests_per_s"] == 50.0
    assert row["output_tokens_total"] == row["output_tokens_expected"] == 4 * 8 and row["goodput_pct"] == 100.0
    assert row["goodput_bounds"] == "ttft_ms_p99<=1000" and row["num_requests_failed"] == 0
    assert row["load_mode"] == "open" and 0 <= row["client_lateness_ms_p50"] <= row["client_lateness_ms_max"]
    import pandas as pd

    lateness = pd.read_parquet(tmp_path / "job" / "requests.parquet")["lateness_ms"]
    assert lateness.notna().all() and (lateness >= 0).all()


BAD_REPLIES = {
    "data null": dict(bad="event", bad_line=b"data: null"),
    "data a list": dict(bad="event", bad_line=b"data: [1,2]"),
    "choices a string": dict(bad="event", bad_line=b'data: {"choices": "abc"}'),
    "usage a list": dict(bad="event", bad_line=b'data: {"choices": [], "usage": [1]}'),
    "count a string": dict(bad="event", bad_line=b'data: {"choices": [], "usage": {"completion_tokens": "lots"}}'),
    "not JSON": dict(bad="event", bad_line=b"data: {oops"),
    "stream=true ignored": dict(bad="json_body"),
    "an HTML page": dict(bad="html"),
}


@pytest.mark.parametrize("kind", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_a_malformed_reply_fails_its_request_only(compose_cfg, kind):
    with StandIn(bad_every=2, **kind) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=6", "load.max_concurrency=1"])
        out = engine.generate(_requests(config, 4), None, lambda n: None)
    assert [r.error is None for r in out] == [False, True, False, True], [r.error for r in out]
    assert all("malformed event" in r.error or "not a server-sent event" in r.error for r in out[::2])
    assert all(r.output_tokens == 6 and len(r.token_times_s) == 6 for r in out[1::2])


def test_a_keep_alive_trickle_ends_at_the_chunk_timeout(compose_cfg):
    out, took_s = _bad_then_good(compose_cfg, StandIn(bad="trickle", bad_every=2, delay_s=0.05),
                                 "server.chunk_timeout_s=0.5")
    assert took_s < 5 and out[0].error == "TimeoutError: past server.chunk_timeout_s=0.5 s" and out[1].error is None


def test_a_server_slow_to_answer_ends_at_the_connect_timeout(compose_cfg):
    with StandIn(mode="slow") as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4", "server.connect_timeout_s=0.5"])
        t0 = time.monotonic()
        out = engine.generate(_requests(config, 2), None, lambda n: None)
        assert time.monotonic() - t0 < 2.5
    assert all(r.error == "TimeoutError: past server.connect_timeout_s=0.5 s" for r in out), [r.error for r in out]


def test_a_stream_that_keeps_sending_tokens_outlives_the_chunk_timeout(compose_cfg):
    """The chunk bound is the gap between tokens, not the request's length: 4 tokens 0.2 s apart pass 0.5 s."""
    with StandIn(delay_s=0.2) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4", "server.chunk_timeout_s=0.5"])
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    assert all(r.error is None and r.output_tokens == 4 for r in out), [r.error for r in out]
    assert all(r.token_times_s[-1] - r.start_s > 0.5 for r in out)


def test_a_bound_past_the_request_deadline_is_named_as_the_request_timeout(compose_cfg):
    with StandIn(bad="trickle", delay_s=0.05) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4", "server.request_timeout_s=0.5"])
        out = engine.generate(_requests(config, 1), None, lambda n: None)
    assert out[0].error == "TimeoutError: past server.request_timeout_s=0.5 s"


@pytest.mark.parametrize("override", ["server.chunk_timeout_s=inf", "server.chunk_timeout_s=0",
                                      "server.connect_timeout_s=-1", "server.connect_timeout_s=nan"])
def test_a_bound_that_is_not_a_finite_positive_time_is_refused(compose_cfg, override):
    from llem.support.errors import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", "\\.")):
        to_config(compose_cfg(["server=launch", override]))


@pytest.mark.parametrize("count, streamed", [(24, None), (2, None), (-5, None), (8, 3)])
def test_a_wrong_token_count_is_noted_and_flagged_never_credited(compose_cfg, count, streamed):
    from llem.measure.load_metrics import load_part
    from llem.measure.metrics import request_rows

    with StandIn(bad="count", bad_every=2, count=count, streamed=streamed) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=8", "load.max_concurrency=1"])
        reqs = _requests(config, 4)
        out = engine.generate(reqs, None, lambda n: None)
    rows = request_rows(out, min(r.start_s for r in out))
    _, flags = load_part(out, rows, 1.0, config)
    assert all(r.error is None for r in out) and [f.code for f in flags] == ["token_count_mismatch"]
    assert [bool(r.token_count_note) for r in rows] == [True, False, True, False]
    assert [r.output_tokens for r in rows] == [streamed or 8, 8, streamed or 8, 8]


@pytest.mark.parametrize("answer", [b'[{"id": "m"}]', b"<html>models</html>", b'{"data": [{"id": 7}]}', b"null",
                                    b'{"data": ["m"]}', b'{"data": {"id": "m"}}'],
                         ids=["a list", "html", "an id not a string", "null", "a model not an object", "data no list"])
def test_a_models_list_of_the_wrong_shape_is_a_clear_server_error(compose_cfg, answer):
    with StandIn(models=answer) as server:
        with pytest.raises(ServerError, match="server.url=.*/v1/models"):
            srv.check_external(server.url)
        with pytest.raises(ServerError, match="server.url=.*/v1/models"):
            _client(compose_cfg, server.url)


def _job(compose_cfg, tmp_path, **stand_in):
    import pandas as pd

    from tests.conftest import run_in_process

    with StandIn(**stand_in) as server:
        row = run_in_process(compose_cfg, ["server=external", f"server.url={server.url}", "load.max_concurrency=1"],
                             tmp_path / "job")
    return row, pd.read_parquet(tmp_path / "job" / "requests.parquet")


def test_a_job_with_malformed_replies_measures_the_others(compose_cfg, tmp_path):
    row, reqs = _job(compose_cfg, tmp_path, bad="event", bad_every=2, bad_line=b"data: null")
    failed = reqs["error"].notna()
    assert row["status"] == "ok", row["error"]
    assert len(reqs) == 4 and 0 < failed.sum() < 4 and row["num_requests_failed"] == failed.sum()
    assert reqs["error"][failed].str.startswith("malformed event").all() and (reqs["output_tokens"][~failed] == 8).all()
    assert "requests_failed" in str(row["flags"])


def test_a_job_charges_each_prompt_the_tokens_the_server_took_less_those_it_served_from_its_cache(compose_cfg,
                                                                                                  tmp_path):
    row, reqs = _job(compose_cfg, tmp_path, cached=2)  # the stand-in reports prompt_tokens=3
    assert row["status"] == "ok", row["error"]
    assert (reqs["prompt_tokens_cached"] == 2).all() and (reqs["prompt_tokens_charged"] == 1).all()
    assert row["prompt_tokens_cached_total"] == 2 * len(reqs)


def test_a_job_whose_server_inflates_its_counts_credits_only_what_was_asked(compose_cfg, tmp_path):
    row, reqs = _job(compose_cfg, tmp_path, bad="count", count=24)
    assert row["status"] == "ok", row["error"]
    assert reqs["error"].isna().all() and (reqs["output_tokens"] == 8).all() and row["output_tokens_total"] == 32
    assert reqs["token_count_note"].str.contains("reported 24 tokens").all()
    assert "token_count_mismatch" in str(row["flags"])


def test_each_request_is_due_at_t0_plus_its_offset_and_its_lateness_is_sent_minus_due(compose_cfg):
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, ["load.request_rate=50", "output_len=2"])
        reqs = _requests(config, 8)
        out = engine.generate(reqs, None, lambda n: None)
    t0 = out[0].arrival_s - reqs[0].arrival_s
    for req, res in zip(reqs, out):
        assert res.arrival_s == pytest.approx(t0 + req.arrival_s, abs=1e-9)  # the due time, not a wake-up
        assert 0 <= res.lateness_s < 0.05 and res.start_s - res.arrival_s == pytest.approx(res.lateness_s)


def test_a_burst_is_due_at_once_and_ttft_counts_from_then(compose_cfg):
    from llem.measure.metrics import request_rows

    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=2"])
        out = engine.generate(_requests(config, 6), None, lambda n: None)
    assert len({r.arrival_s for r in out}) == 1
    rows = request_rows(out, out[0].arrival_s)
    assert all(row.ttft_ms == pytest.approx((r.first_token_s - r.arrival_s) * 1000) for row, r in zip(rows, out))


def test_in_a_closed_loop_a_request_is_due_when_its_slot_freed(compose_cfg):
    with StandIn(delay_s=0.02) as server:
        engine, config = _client(compose_cfg, server.url, ["load.max_concurrency=2", "output_len=3"])
        out = engine.generate(_requests(config, 6), None, lambda n: None)
    assert server.most_in_flight <= 2
    first = min(r.arrival_s for r in out)
    later = sorted(r.arrival_s for r in out)[2:]
    ends = sorted(r.end_s for r in out)
    assert all(t > first + 0.05 for t in later)  # each after a request of three 20 ms tokens ended
    assert all(any(abs(t - e) < 0.02 for e in ends) for t in later)  # ... at that end
    assert all(0 <= r.lateness_s < 0.05 for r in out)


def test_the_window_bound_ends_requests_in_flight_and_never_waits_for_later_ones(compose_cfg):
    with StandIn(mode="slow") as server:  # answers after 3 s
        engine, config = _client(compose_cfg, server.url, ["load.request_rate=1", "output_len=2",
                                                           "measure.min_window_s=0", "measure.max_window_s=1.5"])
        reqs = [Request(i, [5, 6, 7], arrival_s=float(i)) for i in range(4)]  # due at 0, 1, 2 and 3 s
        t = time.monotonic()
        out = engine.generate(reqs, None, lambda n: None)
        took = time.monotonic() - t
    assert took < 2.5
    assert [("still in flight" in r.error, "never sent" in r.error) for r in out] == [
        (True, False), (True, False), (False, True), (False, True)]
    assert all("measure.max_window_s=1.5" in r.error for r in out)


def test_a_line_cut_across_reads_is_read_whole_and_stamped_when_it_completes(compose_cfg):
    with StandIn(delay_s=0.001, split_s=0.05) as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=3"])
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    for r in out:
        assert r.error is None and r.output_tokens == 3 and len(r.token_times_s) == 3
        gaps = np.diff([r.start_s, *r.token_times_s])
        assert (gaps >= 0.045).all()  # each token when the second half of its line came, not the first


@pytest.mark.parametrize("mode, status", [("busy", "HTTP 429"), ("denied", "HTTP 401")])
def test_a_prompt_probe_refused_for_another_reason_than_its_prompt_names_the_status(compose_cfg, mode, status):
    with StandIn(mode=mode) as server, pytest.raises(ServerError, match=f"with {status}: "):
        _client(compose_cfg, server.url)


def test_a_text_only_server_is_told_apart_by_the_probe_and_the_refusal_is_quoted(compose_cfg):
    with StandIn(tokens_only=True) as server:
        engine, _ = _client(compose_cfg, server.url, id_words=False)
    assert engine.prompt == "text" and engine.probe_note.startswith("HTTP 400: ")
    with pytest.raises(WorkloadError, match="it answered a prompt of token ids with HTTP 400: "):
        engine._prompt(Request(0, [5, 6, 7]))


def test_a_line_that_never_ends_fails_its_request_at_the_line_bound_not_the_chunk_timeout(compose_cfg):
    out, took_s = _bad_then_good(compose_cfg, StandIn(bad="endless", bad_every=2, delay_s=0.001),
                                 "server.chunk_timeout_s=60")
    assert took_s < 30
    assert "without a line break" in out[0].error and out[1].error is None


def test_an_error_body_that_never_ends_is_quoted_in_part(compose_cfg):
    with StandIn(mode="fail_endless") as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4", "server.request_timeout_s=60"],
                                 prompt="token_ids")
        t0 = time.monotonic()
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    assert time.monotonic() - t0 < 30
    assert all(r.error.startswith("HTTP 500: eee") and len(r.error) < 400 for r in out)


def test_a_models_answer_trickled_a_byte_at_a_time_fails_the_check_within_its_bound():

    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def trickle():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n")
                while not stop.wait(0.3):
                    conn.sendall(b" ")

        threading.Thread(target=trickle, daemon=True).start()
        t0 = time.monotonic()
        try:
            with pytest.raises(ServerError, match="did not answer GET /v1/models within"):
                srv.check_external(f"http://127.0.0.1:{listener.getsockname()[1]}")
        finally:
            stop.set()
    assert time.monotonic() - t0 < srv.CHECK_TIMEOUT_S + 1.0


def test_a_redirected_request_is_an_error_not_a_measure_of_where_it_points(compose_cfg):
    with StandIn(mode="moved") as server:
        engine, config = _client(compose_cfg, server.url, ["output_len=4"], prompt="token_ids")
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    assert all(r.error.startswith("HTTP 307: a redirect, not followed") and r.output_tokens == 0 for r in out)
