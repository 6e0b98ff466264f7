"""Pretrained weights: a local copy (a directory, or a complete snapshot in the Hugging Face cache)
or a reachable Hub, else the job fails at the check with the download command. The Hub is played by
an HTTP server on loopback, an unreachable one by a closed port and by a socket that never answers."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from llem.config import ModelConfig, Weights, model_source
from llem.config.model_source import ModelUnavailable
from tests.conftest import FAST, fake_distribution, run_llem

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_NotARealTokenForTheProbe42"


def _model(hf_id: str, revision: str = None) -> ModelConfig:
    return ModelConfig(name="m", hf_id=hf_id, weights=Weights.pretrained, revision=revision)


def _snapshot(cache: Path, repo: str, files: dict, ref: str = "main", commit: str = COMMIT) -> Path:
    """The hub cache layout huggingface_hub writes: blobs, a snapshot of links to them, a ref to the commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / f"blob-{name}"
        if data is not None:  # None: a link whose blob never arrived (a download cut short)
            blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty hub cache of the test's own, and the Hub turned off."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                 "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))  # no token file of the machine's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


WEIGHTS = {"config.json": b"{}", "model.safetensors": b"w"}


def test_a_local_directory_or_a_complete_cached_snapshot_is_a_local_copy(offline, tmp_path, monkeypatch):
    local = tmp_path / "my-model"
    local.mkdir()
    model_source.check(_model(str(local)))
    _snapshot(offline, "org/main", WEIGHTS)
    model_source.check(_model("org/main"))
    _snapshot(offline, "org/tagged", WEIGHTS, ref="v1")
    model_source.check(_model("org/tagged", revision="v1"))
    _snapshot(offline, "org/pinned", WEIGHTS, ref=None)
    model_source.check(_model("org/pinned", revision=COMMIT))  # a commit names its snapshot directly
    shards = {"config.json": b"{}", "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode(),
        "model-00001-of-00002.safetensors": b"1", "model-00002-of-00002.safetensors": b"2"}
    _snapshot(offline, "org/sharded", shards)
    model_source.check(_model("org/sharded"))
    monkeypatch.delenv("HF_HUB_CACHE")  # HF_HOME then holds the cache, in hub/
    _snapshot(tmp_path / "home" / "hub", "org/home", WEIGHTS)
    model_source.check(_model("org/home"))
    with pytest.raises(ModelUnavailable):
        model_source.check(_model("org/main"))  # in the other cache, no longer the one read


@pytest.mark.parametrize("files, ref, revision, says", [
    ({"config.json": b"{}", "tokenizer.json": b"{}"}, "main", None, "has no complete weight files"),
    ({"config.json": b"{}", "model.safetensors": None}, "main", None, "has no complete weight files"),
    ({"config.json": b"{}", "model.safetensors.index.json": b'{"weight_map": {"a": "model-1.safetensors", '
      b'"b": "model-2.safetensors"}}', "model-1.safetensors": b"1"}, "main", None, "has no complete weight files"),
    ({"model.safetensors": b"w"}, "main", None, "has no config.json"),
    (WEIGHTS, "main", "v2", "holds no snapshot of revision v2"),
])
def test_an_incomplete_or_other_revision_snapshot_is_no_local_copy(offline, files, ref, revision, says):
    _snapshot(offline, "org/partial", files, ref=ref)
    with pytest.raises(ModelUnavailable, match=says):
        model_source.check(_model("org/partial", revision=revision))


def test_offline_without_a_local_copy_names_the_download_command_and_random_weights(offline, monkeypatch):
    with pytest.raises(ModelUnavailable) as err:
        model_source.check(_model("org/absent", revision="v1"))
    message = str(err.value)
    assert message.startswith("model.hf_id=org/absent (model.weights=pretrained) has no local copy")
    assert "HF_HUB_OFFLINE is set" in message and str(offline) in message
    assert "hf download org/absent --revision v1" in message and "model.weights=random" in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    with pytest.raises(ModelUnavailable, match="TRANSFORMERS_OFFLINE is set") as err:
        model_source.check(_model("org/absent"))
    assert "hf download org/absent (or set" in str(err.value)  # no --revision when none is set


def test_random_weights_need_no_source(offline):
    model_source.check(ModelConfig(name="m", hf_id="org/absent", weights=Weights.random,
                                   architecture={"model_type": "llama"}))


def test_the_download_command_is_the_installed_clis(on_path, monkeypatch):
    installed = model_source.download_command("org/m", None)
    assert installed == "hf download org/m"  # huggingface_hub >= 0.34 installs hf
    assert (Path(sys.executable).parent / "hf").exists()

    def older_hub(root):
        fake_distribution(root, "huggingface_hub", "0.20.3")
        (root / "huggingface_hub-0.20.3.dist-info" / "entry_points.txt").write_text(
            "[console_scripts]\nhuggingface-cli = huggingface_hub.commands.huggingface_cli:main\n")

    on_path("huggingface_hub", older_hub)
    assert model_source.download_command("org/m", "r1") == "huggingface-cli download org/m --revision r1"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_at_the_check(offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelUnavailable, match=r"the Hugging Face Hub at http://127\.0\.0\.1:\d+ cannot be reached"):
        model_source.check(_model("org/absent"))
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(ModelUnavailable, match="did not answer|cannot be reached .*timed out") as err:
            model_source.check(_model("org/absent"))
    assert "hf download org/absent" in str(err.value)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A Hub on loopback: org/public is there (a redirect to the file, as the Hub answers), org/gated
    wants a token, anything else is not found. It records what it was asked."""

    seen: list = []

    def do_HEAD(self):
        _Hub.seen.append((self.path, self.headers.get("Authorization")))
        repo = self.path.split("/resolve/")[0]
        status = {"/org/public": 302, "/org/gated": 401}.get(repo, 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://127.0.0.1:9/nowhere")  # must not be followed
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(offline, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}/")
    _Hub.seen = []
    yield _Hub.seen
    server.shutdown()
    server.server_close()


def test_a_reachable_hub_that_serves_the_model_lets_the_job_download_it(hub):
    model_source.check(_model("org/public", revision="v2"))
    assert hub == [("/org/public/resolve/v2/config.json", None)]


@pytest.mark.parametrize("repo, status", [("org/gated", 401), ("org/missing", 404)])
def test_a_repo_the_hub_refuses_is_not_found_or_gated(hub, monkeypatch, repo, status):
    with pytest.raises(ModelUnavailable) as err:
        model_source.check(_model(repo))
    assert f"answers {status} for it: not found or gated; set HF_TOKEN" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ModelUnavailable) as err:
        model_source.check(_model(repo))
    assert "HF_TOKEN is set but gives no access" in str(err.value) and TOKEN not in str(err.value)
    assert hub[-1] == (f"/{repo}/resolve/main/config.json", f"Bearer {TOKEN}")  # the token went to the Hub only


def test_the_token_file_of_hf_auth_login_is_sent(hub, tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text(TOKEN + "\n")
    model_source.check(_model("org/public"))
    assert hub[-1][1] == f"Bearer {TOKEN}"


@pytest.mark.slow
def test_a_sweep_without_the_model_fails_every_job_at_the_check(tmp_path):
    """The whole path: two jobs, each a failed row at the check with the download command, none measured."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    args = ["-m", "batch=1,2", "model.weights=pretrained", "model.hf_id=llem-test/not-cached", "isolate=false",
            "hydra.sweep.dir=sweep"]
    proc = run_llem(args, cwd=tmp_path, env_extra=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "0 ok, 0 skipped, 2 failed" in out, out
    rows = [pd.read_parquet(p).iloc[0] for p in (tmp_path / "sweep").glob("*/results.parquet")]
    assert sorted(r["cfg.batch"] for r in rows) == [1, 2]
    for r in rows:
        assert r["status"] == "failed" and r["error_stage"] == "check" and r["error_type"] == "ModelUnavailable"
        assert "hf download llem-test/not-cached" in r["error"] and "model.weights=random" in r["error"]
    assert "loading" not in out and "device-idle" not in out and "measuring" not in out


def test_a_dry_run_without_the_model_says_each_job_would_fail(compose_cfg, offline, tmp_path, monkeypatch, caplog):
    """Each job's dry run, in this process (a failing dry run's exit code: tests/test_aggregate.py)."""
    from tests.test_config_refused import _dry_run

    for batch in (1, 2):
        _dry_run(compose_cfg, [f"batch={batch}", "model.weights=pretrained", "model.hf_id=llem-test/not-cached"],
                 tmp_path / f"batch={batch}", monkeypatch, caplog)
    assert caplog.text.count("invalid: model.hf_id=llem-test/not-cached") == 2


def test_a_job_whose_hub_cannot_be_reached_fails_at_the_check(compose_cfg, offline, monkeypatch, tmp_path):
    """The job's own path, in this process: a failed row at the check (its exit code: the sweep above)."""
    from tests.conftest import run_in_process

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    run_in_process(compose_cfg, ["model.weights=pretrained", "model.hf_id=llem-test/not-cached"], tmp_path / "run")
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "check" and "cannot be reached" in r["error"]


@pytest.mark.slow
def test_the_engine_loads_pretrained_weights_from_a_directory_and_from_the_cache(tmp_path):
    """A small model saved with save_pretrained, given as a directory and as a repo of the cache: both
    measured offline (the engine keeps finding what the check found)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=4096,
                                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "saved")
    files = {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir()}
    _snapshot(tmp_path / "cache", "llem-test/tiny", files)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    proc = run_llem(["-m", *FAST, "isolate=false", "model.weights=pretrained",
                     f"model.hf_id={tmp_path / 'saved'},llem-test/tiny", "hydra.sweep.dir=sweep"],
                    cwd=tmp_path, env_extra=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "2 ok, 0 skipped, 0 failed" in out, out
    rows = {r["cfg.model.hf_id"]: r for r in (pd.read_parquet(p).iloc[0]
                                               for p in (tmp_path / "sweep").glob("*/results.parquet"))}
    assert set(rows) == {str(tmp_path / "saved"), "llem-test/tiny"}
    assert all(r["status"] == "ok" and r["output_tokens_total"] > 0 for r in rows.values())
