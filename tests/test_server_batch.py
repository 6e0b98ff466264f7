"""``batch`` null: a launched server runs at its engine's own default; llem's process at IN_PROCESS_BATCH."""

from llem.backends._trt_args import serve_argv
from llem.backends.pytorch import PyTorchEngine
from llem.backends.vllm import VllmEngine
from llem.config import IN_PROCESS_BATCH, to_config
from llem.measure import sizing
from llem.serving.client import ServerEngine
from llem.serving.server import Endpoint


def _launch_argv(compose_cfg, tmp_path, *overrides):
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "server=launch",
                                    f"cache_dir={tmp_path}", *overrides]))
    return VllmEngine.serving(config, "cuda").command(tmp_path, "127.0.0.1", 8000)


def test_the_default_experiment_holds_the_in_process_batch(compose_cfg):
    assert to_config(compose_cfg([])).batch == IN_PROCESS_BATCH


def test_a_set_batch_is_kept_in_process(compose_cfg):
    assert to_config(compose_cfg(["batch=16"])).batch == 16


def test_a_launched_server_without_batch_gets_no_max_num_seqs(compose_cfg, tmp_path):
    spec = _launch_argv(compose_cfg, tmp_path)
    assert "--max-num-seqs" not in spec.argv
    assert spec.max_in_flight is None and "max_num_seqs" in spec.max_in_flight_null_reason


def test_a_launched_server_with_batch_gets_it_as_max_num_seqs(compose_cfg, tmp_path):
    spec = _launch_argv(compose_cfg, tmp_path, "batch=8")
    assert spec.argv[spec.argv.index("--max-num-seqs") + 1] == "8"
    assert spec.max_in_flight == 8 and spec.max_in_flight_null_reason is None


def test_trtllm_serve_without_batch_gets_no_max_batch_size(compose_cfg, tmp_path):
    base = ["backend=tensorrt", "model=llama3", "model.weights=random", "server=launch", f"cache_dir={tmp_path}"]
    unset = serve_argv(to_config(compose_cfg(base)), "m", "127.0.0.1", 8000)
    assert "--max_batch_size" not in unset
    set_ = serve_argv(to_config(compose_cfg([*base, "batch=8"])), "m", "127.0.0.1", 8000)
    assert set_[set_.index("--max_batch_size") + 1] == "8"


def test_transformers_serve_says_why_its_concurrency_is_unknown(compose_cfg, tmp_path):
    config = to_config(compose_cfg(["server=launch", f"cache_dir={tmp_path}"]))
    spec = PyTorchEngine.serving(config, "cpu").command(tmp_path, "127.0.0.1", 8000)
    assert spec.max_in_flight is None and "no maximum batch size" in spec.max_in_flight_null_reason
    assert not [w for w in spec.warnings if "batch=" in w]  # no batch was asked for, so none is ignored


def _server_engine(compose_cfg, overrides, endpoint):
    return ServerEngine(to_config(compose_cfg(["server=launch", *overrides])), "cpu", endpoint, lambda n: {})


def test_a_server_of_unknown_concurrency_is_sized_by_the_clients_cap(compose_cfg):
    endpoint = Endpoint(url="http://x", mode="launch", prompt="text", max_in_flight_null_reason="unknown")
    engine = _server_engine(compose_cfg, ["load.max_concurrency=6"], endpoint)
    assert engine.sequences_in_flight() == 6
    assert engine.max_in_flight() == (None, "unknown")


def test_a_server_of_unknown_concurrency_without_a_cap_is_sized_by_the_in_process_batch(compose_cfg):
    endpoint = Endpoint(url="http://x", mode="launch", prompt="text", max_in_flight_null_reason="unknown")
    assert _server_engine(compose_cfg, [], endpoint).sequences_in_flight() == IN_PROCESS_BATCH


def test_a_server_with_batch_is_sized_by_it(compose_cfg):
    endpoint = Endpoint(url="http://x", mode="launch", prompt="text", max_in_flight=12)
    engine = _server_engine(compose_cfg, ["batch=12"], endpoint)
    assert engine.sequences_in_flight() == 12 and engine.max_in_flight() == (12, None)


def test_the_row_records_what_the_engine_ran_at():
    plan = sizing.plan(None, 2, 0.0, 1000, 4, on_gpu=False)
    plan.max_in_flight, plan.max_in_flight_null_reason = None, "its own default"
    part = sizing.part(plan, 8)
    assert part.num_in_flight_engine is None and part.num_in_flight_engine_null_reason == "its own default"
    assert part.num_in_flight == 4


def _spec(**kw):
    from llem.backends.base import ServerLaunch

    return ServerLaunch(argv=["serve"], in_flight_flag="--max-num-seqs", **kw)


def test_the_engines_flag_in_server_args_is_what_the_server_runs_at():
    from llem.deploy.server_process import in_flight

    unknown = _spec(max_in_flight_null_reason="its own default")
    assert in_flight(unknown, ["--max-num-seqs", "64"]) == {"max_in_flight": 64, "max_in_flight_null_reason": None}
    assert in_flight(unknown, ["--max-num-seqs=32"])["max_in_flight"] == 32
    assert in_flight(unknown, ["--enforce-eager"]) == {"max_in_flight": None,
                                                        "max_in_flight_null_reason": "its own default"}


def test_a_pytorch_server_job_without_a_batch_is_sized_by_the_clients_cap_per_replica(compose_cfg):
    config = to_config(compose_cfg(["server=launch", "backend.num_processes=2", "load.max_concurrency=3"]))
    assert PyTorchEngine(config, "cpu").sequences_in_flight() == 6
