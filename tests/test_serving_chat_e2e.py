"""server.api=chat against real transformers serve on the tiny random model (its id-word tokenizer's chat
template adds nothing), running on its own as an external server (launched by llem:
tests/test_served_workloads_e2e.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_llem, served_cache

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

JOB = ["dataset.num_requests=8", "input_len=32", "output_len=16", "load.request_rate=8", "hydra.run.dir=run"]


def _results(job: Path):
    return pd.read_parquet(job / "results.parquet").iloc[0], pd.read_parquet(job / "requests.parquet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def transformers_serve(tmp_path, tmp_path_factory, compose_cfg):
    """transformers serve on the tiny random checkpoint, started as llem would start it, outside llem."""
    from llem.backends.pytorch import PyTorchServing
    from llem.config import to_config
    from llem.deploy.server_process import wait_healthy

    cache = served_cache(tmp_path, tmp_path_factory)
    config = to_config(compose_cfg(["server=launch", f"cache_dir={cache}"]))
    serving = PyTorchServing(config, "cpu")
    port = _free_port()
    spec = serving.command(serving.served_model(cache), "127.0.0.1", port)
    log = tmp_path / "external.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*spec.argv, "--cb-num-blocks", "64"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **spec.env})
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", "/health", str(log), 300)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_external_chat_with_text_prompts(tmp_path, transformers_serve):
    url, log = transformers_serve
    run_llem(["server=external", f"server.url={url}", "server.api=chat", "dataset=builtin", *JOB], cwd=tmp_path,
             check=True, timeout=600)
    r, req = _results(tmp_path / "run")
    assert r["status"] == "ok" and r["server_api"] == "chat" and r["server_mode"] == "external"
    assert len(req) == 8 and req["error"].isna().all() and (req["output_tokens"] == 16).all()
    assert req["token_count_note"].isna().all() and (req["ttft_ms"] > 0).all()
    assert (req["server_input_tokens"] > 0).all()  # its own tokenizer's count of the message
    assert "POST /v1/chat/completions" in log.read_text()
