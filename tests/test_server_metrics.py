"""The server's own view of the window (server.metrics): its Prometheus /metrics parsed by prometheus_client,
read with the names of the server's kind, summarised over the window (gauges averaged over the scrapes inside
it, counters as their rise between the scrapes around it), each column null with its reason where the server
did not say; and jobs against a stand-in server whose vLLM-named metrics move with its load."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.backends._metric_names import SGLANG, VLLM, choose
from llem.measure.server_metrics import summary
from llem.serving.scrape import Scrape, read, samples
from llem.workload.records import RequestResult

pytest.importorskip("prometheus_client")


def _vllm_text(running=3.0, waiting=1.0, kv=(0.25, 0.75), generated=100.0) -> str:
    """A page as vLLM writes it (two engines of a data-parallel server), by prometheus_client itself."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    gauges = {n: Gauge(n, "", ["engine"], registry=registry) for n in
              ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")}
    tokens = Counter("vllm:generation_tokens", "", ["engine"], registry=registry)
    Histogram("vllm:time_to_first_token_seconds", "", registry=registry).observe(0.1)
    for engine, usage in enumerate(kv):
        gauges["vllm:num_requests_running"].labels(engine=str(engine)).set(running / len(kv))
        gauges["vllm:num_requests_waiting"].labels(engine=str(engine)).set(waiting / len(kv))
        gauges["vllm:kv_cache_usage_perc"].labels(engine=str(engine)).set(usage)
        tokens.labels(engine=str(engine)).inc(generated / len(kv))
    return generate_latest(registry).decode()


def _scrape(t, values, error=None):
    return Scrape(sent_s=t, done_s=t + 0.01, phase="measure", values=values, error=error)


def _outputs(tokens):
    return [RequestResult(request_id=0, input_tokens=3, output_tokens=tokens, start_s=0.0, end_s=1.0)]


def test_a_page_is_read_summed_over_its_label_sets_with_the_kv_usage_averaged_as_a_percentage():
    got = read(samples(_vllm_text()), VLLM)
    assert got["running"] == 3.0 and got["waiting"] == 1.0 and got["kv_cache_usage"] == 50.0
    assert got["generation_tokens"] == 100.0 and got["prompt_tokens"] is None  # not on the page: unknown


def test_the_families_read_alone_parse_to_the_same_values_as_the_whole_page():
    text = _vllm_text()
    assert read(samples(text, set(VLLM.names())), VLLM) == read(samples(text), VLLM)


def test_a_server_of_unknown_kind_is_read_with_the_names_it_exposes():
    assert choose(["sglang:num_running_reqs", "process_cpu_seconds_total"]) is SGLANG
    assert choose(samples(_vllm_text()), own=None) is VLLM
    assert choose(["process_cpu_seconds_total"]) is None


def test_gauges_average_the_scrapes_inside_the_window_and_counters_rise_between_those_around_it():
    scrapes = [_scrape(0.0, {"running": 0.0, "kv_cache_usage": 0.0, "generation_tokens": 50.0}),
               _scrape(1.1, {"running": 4.0, "kv_cache_usage": 30.0, "generation_tokens": 90.0}),
               _scrape(1.5, {"running": 2.0, "kv_cache_usage": 70.0, "generation_tokens": 120.0}),
               _scrape(2.5, {"running": 0.0, "kv_cache_usage": 0.0, "generation_tokens": 150.0})]
    part, flags = summary(VLLM, scrapes, 1.0, 2.0, _outputs(100))
    assert part.num_server_running_mean == 3.0 and part.server_kv_cache_usage_pct_mean == 50.0
    assert part.server_kv_cache_usage_pct_peak == 70.0 and part.server_generated_tokens == 100
    assert part.num_server_scrapes == 2 and part.num_server_scrapes_failed == 0 and flags == []


def test_a_metric_the_server_does_not_expose_is_null_with_its_name():
    scrapes = [_scrape(0.0, {"running": 0.0}), _scrape(1.5, {"running": 2.0}), _scrape(2.5, {"running": 0.0})]
    part, _ = summary(VLLM, scrapes, 1.0, 2.0, _outputs(1))
    assert part.server_prompt_tokens is None and part.num_server_running_mean == 2.0
    assert "server_prompt_tokens: the server exposes none of vllm:prompt_tokens_total" in \
        part.server_metrics_null_reason


def test_a_counter_that_went_backwards_is_null_not_negative():
    scrapes = [_scrape(0.0, {"generation_tokens": 500.0}), _scrape(2.5, {"generation_tokens": 20.0})]
    part, _ = summary(VLLM, scrapes, 1.0, 2.0, _outputs(20))
    assert part.server_generated_tokens is None and "went backwards" in part.server_metrics_null_reason


def test_failed_scrapes_are_counted_gaps_and_a_failed_edge_nulls_the_counters_with_its_error():
    scrapes = [_scrape(0.0, {}, error="HTTP 503"), _scrape(1.2, {}, error="TimeoutError: timed out"),
               _scrape(1.5, {"running": 1.0, "generation_tokens": 9.0}), _scrape(2.5, {"generation_tokens": 12.0})]
    part, _ = summary(VLLM, scrapes, 1.0, 2.0, _outputs(3))
    assert part.num_server_scrapes == 1 and part.num_server_scrapes_failed == 1
    assert part.server_generated_tokens is None
    assert "no scrape was answered just before the window (HTTP 503)" in part.server_metrics_null_reason


def test_a_server_that_generated_more_than_the_client_received_is_flagged():
    scrapes = [_scrape(0.0, {"generation_tokens": 0.0}), _scrape(2.5, {"generation_tokens": 150.0})]
    _, flags = summary(VLLM, scrapes, 1.0, 2.0, _outputs(100))
    assert [f.code for f in flags] == ["server_tokens_differ"] and "150" in flags[0].message


def test_a_prefix_cache_never_queried_has_no_hit_rate_and_says_why():
    scrapes = [_scrape(0.0, {"prefix_cache_queries": 10.0, "prefix_cache_hits": 2.0}),
               _scrape(2.5, {"prefix_cache_queries": 10.0, "prefix_cache_hits": 2.0})]
    part, _ = summary(VLLM, scrapes, 1.0, 2.0, _outputs(0))
    assert part.server_prefix_cache_hit_pct is None and "looked no prompt token up" in part.server_metrics_null_reason


@pytest.mark.parametrize("value", ["yes", "required", ""])
def test_server_metrics_takes_auto_on_or_off(compose_cfg, value):
    from llem.config import to_config
    from llem.support.errors import ConfigError

    with pytest.raises(ConfigError, match="server.metrics=.* is invalid: allowed auto .*, on .* or off"):
        to_config(compose_cfg(["server=external", "server.url=http://127.0.0.1:9", f"server.metrics={value!r}"]))


def test_server_metrics_is_refused_without_a_server(compose_cfg):
    from llem.config import to_config
    from llem.support.errors import ConfigError

    with pytest.raises(ConfigError, match="server.metrics is set but server.mode=none does not use it"):
        to_config(compose_cfg(["server.metrics=on"]))


def _job(compose_cfg, tmp_path, stand_in, overrides=()):
    from tests.conftest import run_in_process
    from tests.stand_in_server import StandIn

    pytest.importorskip("aiohttp")
    with StandIn(**stand_in) as server:
        row = run_in_process(compose_cfg, ["server=external", f"server.url={server.url}", *overrides],
                             tmp_path / "job")
    job = tmp_path / "job"
    ts = pd.read_parquet(job / "timeseries.parquet") if (job / "timeseries.parquet").is_file() else None
    return pd.read_parquet(job / "results.parquet").iloc[0], ts, row


def test_a_job_reads_the_servers_metrics_back_from_its_files(compose_cfg, tmp_path):
    """A stand-in running two requests at once, the rest queued: the time series holds what it said as the
    window went, and the row its means, peaks and counts, the token counts agreeing with the client's."""
    r, ts, _ = _job(compose_cfg, tmp_path, dict(metrics="vllm", max_running=2, delay_s=0.03, kv_tokens=64),
                    ["dataset.num_requests=8", "output_len=16"])
    assert r["status"] == "ok", r["error"]
    scraped = ts[ts["num_server_running"].notna()]
    window = scraped[(scraped["t_s"] >= 0) & (scraped["t_s"] <= r["window_s"])]
    assert len(window) >= 3 and window["num_server_running"].max() == 2  # its two slots, full
    assert window["num_server_waiting"].max() > 0 and window["server_kv_cache_usage_pct"].max() > 0
    assert r["server_metrics_source"] == "vllm" and r["num_server_scrapes"] == len(window)
    assert 0 < r["num_server_running_mean"] <= 2 and r["num_server_waiting_mean"] > 0
    assert r["server_kv_cache_usage_pct_peak"] == window["server_kv_cache_usage_pct"].max()
    assert r["server_generated_tokens"] == r["output_tokens_total"] == 8 * 16
    assert r["server_prompt_tokens"] == r["input_tokens_total"] and r["num_server_preemptions"] == 0
    assert 0 <= r["server_prefix_cache_hit_pct"] <= 100 and r["num_server_scrapes_failed"] == 0
    assert pd.isna(r["server_metrics_null_reason"]) and "server_tokens_differ" not in list(r["flags"])


def test_a_server_that_did_other_work_in_the_window_is_flagged(compose_cfg, tmp_path):
    r, _, _ = _job(compose_cfg, tmp_path, dict(metrics="vllm", extra_generated=8))
    assert r["server_generated_tokens"] == 2 * r["output_tokens_total"] and "server_tokens_differ" in list(r["flags"])


def test_a_server_without_metrics_leaves_them_null_with_the_reason_under_auto(compose_cfg, tmp_path):
    r, ts, _ = _job(compose_cfg, tmp_path, {})
    assert r["status"] == "ok", r["error"]
    assert pd.isna(r["num_server_running_mean"]) and pd.isna(r["server_generated_tokens"])
    assert "has no Prometheus metrics llem reads" in r["server_metrics_null_reason"]
    assert "HTTP 404" in r["server_metrics_null_reason"] and ts["num_server_running"].isna().all()


def test_a_page_that_is_not_prometheus_text_is_no_metrics(compose_cfg, tmp_path):
    r, _, _ = _job(compose_cfg, tmp_path, dict(metrics="html"))
    assert r["status"] == "ok" and "not Prometheus text" in r["server_metrics_null_reason"]


def test_a_server_without_metrics_fails_the_check_under_on(compose_cfg, tmp_path):
    r, _, _ = _job(compose_cfg, tmp_path, {}, ["server.metrics=on"])
    assert r["status"] == "failed" and r["error_stage"] == "check"
    assert "server.metrics=on" in r["error"] and "HTTP 404" in r["error"]


def test_metrics_off_scrapes_nothing(compose_cfg, tmp_path):
    from tests.conftest import run_in_process
    from tests.stand_in_server import StandIn

    with StandIn(metrics="vllm") as server:
        run_in_process(compose_cfg, ["server=external", f"server.url={server.url}", "server.metrics=off"],
                       tmp_path / "job")
    r = pd.read_parquet(tmp_path / "job" / "results.parquet").iloc[0]
    assert server.scrapes == 0 and r["server_metrics_null_reason"] == "server.metrics=off"


def test_a_slow_metrics_page_is_a_counted_gap_that_delays_neither_the_window_nor_the_requests(compose_cfg, tmp_path):
    """Every scrape after the check's waits 1.5 s, past the scrape's 1 s bound: each is a gap, counted; the window
    lasts what its requests take (8 tokens × 50 ms), never a scrape's wait."""
    r, _, _ = _job(compose_cfg, tmp_path, dict(metrics="vllm", metrics_delay_s=1.5, delay_s=0.05))
    reqs = pd.read_parquet(tmp_path / "job" / "requests.parquet")
    assert r["status"] == "ok" and reqs["error"].isna().all()
    assert r["window_s"] < 1.0 and r["num_server_scrapes_failed"] >= 1 and r["num_server_scrapes"] == 0
    assert pd.isna(r["server_generated_tokens"]) and "timed out" in r["server_metrics_null_reason"]


def test_every_scrape_carries_the_servers_api_key(compose_cfg, tmp_path, monkeypatch):
    from tests.conftest import run_in_process
    from tests.stand_in_server import StandIn

    monkeypatch.setenv("LLEM_SCRAPE_KEY", "sk-scrape-0123456789")
    with StandIn(metrics="vllm") as server:
        run_in_process(compose_cfg, ["server=external", f"server.url={server.url}",
                                     "server.api_key_env=LLEM_SCRAPE_KEY"], tmp_path / "job")
    assert server.scrapes >= 3 and set(server.authorization) == {"Bearer sk-scrape-0123456789"}


def test_a_window_measured_again_is_read_from_its_own_scrapes_only():
    """Scrapes of a discarded earlier window (measure.min_window_s measures again) never bracket the last one."""
    from llem.measure.server_metrics import ServerScrape
    from llem.serving.scrape import Scraper

    scraper = Scraper("http://127.0.0.1:9/metrics", {}, VLLM, 0.1)
    scraper.scrapes = [_scrape(0.0, {"generation_tokens": 0.0}), _scrape(5.0, {"generation_tokens": 40.0}),
                       _scrape(6.0, {}, error="HTTP 503"), _scrape(8.0, {"generation_tokens": 90.0})]
    scraper.started_s = 6.0
    part, _ = ServerScrape(scraper).part(7.0, 7.5, _outputs(50))
    assert part.server_generated_tokens is None and "before the window (HTTP 503)" in part.server_metrics_null_reason
