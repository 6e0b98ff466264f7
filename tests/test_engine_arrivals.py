"""Engines that take arrivals in llem's process (vLLM, TensorRT-LLM, against the fakes of their APIs), and
the server commands each engine launches (vllm serve, trtllm-serve, transformers serve)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llem.backends.pytorch import PyTorchEngine
from llem.backends.tensorrt import TensorRTEngine
from llem.backends.vllm import VllmEngine, cli_flags
from llem.config import to_config
from llem.workload.arrivals import shape
from llem.workload.records import Request
from tests.test_tensorrt_engine import FakeLLM as FakeTrtLLM
from tests.test_tensorrt_engine import fake_trt  # noqa: F401 - a fixture
from tests.test_vllm_engine import fake_vllm  # noqa: F401 - a fixture


def _timed(config, n):
    reqs = [Request(i, [11, 12, 13]) for i in range(n)]
    shape(reqs, config)
    return reqs


def test_vllm_adds_each_request_at_its_arrival(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=4",
                                    "load.request_rate=50", "load.max_concurrency=2", "output_len=null",
                                    "dataset.output_lengths.mean=6", "dataset.output_lengths.max=12",
                                    f"cache_dir={tmp_path}"]))
    engine = VllmEngine(config, "cuda")
    engine.load()
    reqs = _timed(config, 12)
    t0 = time.perf_counter()
    out = engine.generate(reqs, None, lambda n: None)
    for req, res in zip(reqs, out):
        assert res.output_tokens == res.output_len_requested == req.output_len  # each its own length
        assert res.arrival_s >= t0 + req.arrival_s - 1e-3 and res.start_s >= res.arrival_s
    queue = engine.llm.llm_engine
    assert len(queue.added) == 12 and max(res.start_s - res.arrival_s for res in out) > 0  # the cap made some wait
    spans = sorted((r.start_s, r.end_s) for r in out)
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2  # load.max_concurrency


def test_vllm_built_for_a_larger_batch_keeps_only_its_own_in_flight(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    """An engine kept for the sweep is built with max_num_seqs 8 (a later job's batch); a batch-2 job on it
    never has more than 2 requests in the engine at once, and sees them all through."""
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=2",
                                    "output_len=4", f"cache_dir={tmp_path}"]))
    engine = VllmEngine(config, "cuda")
    engine.build_for = 8
    engine.load()
    assert engine.kwargs["max_num_seqs"] == 8
    out = engine.generate([Request(i, [11, 12, 13]) for i in range(7)], 4, lambda n: None)
    assert [r.output_tokens for r in out] == [4] * 7
    assert len({r.arrival_s for r in out}) == 1 and all(r.start_s >= r.arrival_s for r in out)  # a burst: due at once
    spans = sorted((r.start_s, r.end_s) for r in out)
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2


def test_tensorrt_submits_each_request_at_its_arrival(compose_cfg, fake_trt):  # noqa: F811
    config = to_config(compose_cfg(["backend=tensorrt", "model=tiny", "batch=2", "load.request_rate=40",
                                    "output_len=null", "dataset.output_lengths.mean=4",
                                    "dataset.output_lengths.max=8"]))
    engine = TensorRTEngine(config, "cuda")
    engine.load()
    reqs = _timed(config, 8)
    t0 = time.perf_counter()
    out = engine.generate(reqs, None, lambda n: None)
    assert len(FakeTrtLLM.built[-1].prompts) == 8
    for req, res in zip(reqs, out):
        assert res.output_tokens == req.output_len and res.arrival_s >= t0 + req.arrival_s - 1e-3


def test_vllm_serve_command(compose_cfg, tmp_path):
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=32",
                                    "model.dtype=bfloat16", "server=launch", f"cache_dir={tmp_path}",
                                    "+backend.engine_args.kv_cache_dtype=fp8",
                                    "+backend.engine_args.compilation_config={level: 3}"]))
    serving = VllmEngine.serving(config, "cuda")
    folder = serving.served_model(tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == config.model.architecture["vocab_size"]
    spec = serving.command(folder, "127.0.0.1", 8123)
    argv = spec.argv
    assert argv[argv.index("serve") + 1] == str(folder) and spec.prompt == "token_ids" and spec.id_words
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--port"] == "8123" and pairs["--max-num-seqs"] == "32" and pairs["--load-format"] == "dummy"
    assert pairs["--dtype"] == "bfloat16" and pairs["--max-model-len"] == "256" and pairs["--kv-cache-dtype"] == "fp8"
    assert json.loads(pairs["--compilation-config"]) == {"level": 3}
    assert "--no-enable-prefix-caching" in argv and "--enforce-eager" not in argv
    assert "--skip-tokenizer-init" not in argv and "--disable-log-stats" not in argv
    assert spec.env["VLLM_CACHE_ROOT"].startswith(str(tmp_path))
    assert cli_flags({"a_b": True, "c": False, "d": None}) == ["--a-b"]


def test_vllm_serve_requests_keep_special_tokens_in_the_text(compose_cfg, tmp_path):
    """A random model emits special ids too; dropped from the id-word text, the stream would under-count them."""
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "server=launch",
                                    f"cache_dir={tmp_path}"]))
    extras = VllmEngine.serving(config, "cuda").request_extras(9)
    assert extras == {"ignore_eos": True, "min_tokens": 9, "skip_special_tokens": False}


def test_trtllm_serve_command(compose_cfg, tmp_path):
    config = to_config(compose_cfg(["backend=tensorrt", "model=tiny", "batch=16", "server=launch",
                                    f"cache_dir={tmp_path}"]))
    serving = TensorRTEngine.serving(config, "cuda")
    spec = serving.command(serving.served_model(tmp_path), "127.0.0.1", 8124)
    pairs = dict(zip(spec.argv, spec.argv[1:]))
    assert pairs["--backend"] == "pytorch" and pairs["--max_batch_size"] == "16" and pairs["--tp_size"] == "1"
    assert pairs["--max_seq_len"] == "256" and pairs["--port"] == "8124"
    extra = yaml.safe_load(Path(pairs["--extra_llm_api_options"]).read_text())
    assert extra["load_format"] == "dummy" and extra["kv_cache_config"] == {"enable_block_reuse": False}
    assert "skip_tokenizer_init" not in extra and "max_batch_size" not in extra


def test_transformers_serve_command(compose_cfg, tmp_path):
    config = to_config(compose_cfg(["server=launch", f"cache_dir={tmp_path}"]))
    serving = PyTorchEngine.serving(config, "cpu")
    spec = serving.command(Path("/m"), "127.0.0.1", 8125)
    assert spec.argv[3:5] == ["serve", "/m"] and "--continuous-batching" in spec.argv
    pairs = dict(zip(spec.argv, spec.argv[1:]))
    assert pairs["--device"] == "cpu" and pairs["--port"] == "8125" and spec.prompt == "text" and spec.id_words
    assert json.loads(serving.request_extras(7)["generation_config"]) == {"min_new_tokens": 7}


@pytest.mark.parametrize("overrides, pages", [
    ([], 4 * (1 + 1)),  # batch 4 of 128 + 128 tokens: one 256-token page each, and one of slack
    (["batch=8", "input_len=512", "output_len=300"], 8 * (4 + 1)),
    (["load.max_concurrency=16"], 16 * (1 + 1)),  # a larger client cap: the cache holds every sequence in flight
])
def test_transformers_serve_kv_cache_is_sized_to_the_workload(compose_cfg, tmp_path, overrides, pages):
    config = to_config(compose_cfg(["server=launch", f"cache_dir={tmp_path}", *overrides]))
    spec = PyTorchEngine.serving(config, "cpu").command(Path("/m"), "127.0.0.1", 8125)
    assert dict(zip(spec.argv, spec.argv[1:]))["--cb-num-blocks"] == str(pages)
    assert any(f"holds {pages} pages" in w for w in spec.warnings)  # recorded in the row's warnings


def test_a_cache_size_in_server_args_wins(compose_cfg, tmp_path):
    from llem.backends._serve_cache import cache_args

    config = to_config(compose_cfg(["server=launch", "server.args=[--cb-num-blocks,64]"]))
    assert cache_args(config, "5.12.0")[0] == []
    assert cache_args(to_config(compose_cfg(["server=launch"])), "5.9.1")[0] == []  # too old to take the flag


def test_pytorch_batches_what_has_arrived(compose_cfg, tmp_path):
    """The tiny model in-process at a rate with natural lengths: static batches of the requests that have
    arrived, each request its own length, the waits recorded."""
    from tests.conftest import run_in_process

    row = run_in_process(compose_cfg, ["load.request_rate=200", "output_len=null", "dataset.num_requests=24",
                                       "dataset.output_lengths.mean=6", "dataset.output_lengths.max=12", "batch=4"],
                         tmp_path / "job")
    assert row["status"] == "ok", row["error"]
    req = pd.read_parquet(tmp_path / "job" / "requests.parquet")
    assert (req["output_tokens"] == req["output_tokens_requested"]).all() and req["output_tokens"].nunique() > 3
    assert row["output_tokens_total"] == row["output_tokens_expected"] == req["output_tokens_requested"].sum()
    sizes = req.groupby("batch_index").size()
    assert sizes.max() <= 4 and len(sizes) > 6 and sizes.iloc[0] == 1  # what had arrived: the first alone
    assert (req["queue_ms"] >= 0).all() and (req["start_offset_s"] >= req["arrival_offset_s"] - 1e-6).all()
    assert row["arrivals_per_s"] == pytest.approx(200, rel=0.25)
    assert row["padding_overhead_pct"] > 0 or (sizes == 1).all()  # a batch runs to its longest request


def test_static_batches_take_what_has_arrived():
    from llem.backends._torch_batches import static_batches

    reqs = [Request(i, [1] * (3 + i), arrival_s=t) for i, t in enumerate([0.0, 0.0, 0.05, 0.05, 0.2])]
    got = [[r.request_id for r in batch] for batch, _ in static_batches(reqs, 2, sort_by_length=False)]
    assert got == [[0, 1], [2, 3], [4]]
    at_once = [Request(i, [1] * (3 + i)) for i in range(5)]
    batches = list(static_batches(at_once, 2, sort_by_length=True))
    assert [[r.request_id for r in b] for b, _ in batches] == [[4, 3], [2, 1], [0]]
    assert len({t0 for _, t0 in batches}) == 1  # a burst: every batch's requests due at the call's start
