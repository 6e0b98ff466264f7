"""Dataset groups: the built-in prompt set, Hugging Face datasets from local copies and the Hub cache,
length bounds and their counts, offline behaviour; end to end on the tiny model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llem import workload
from llem.config import to_config
from llem.support.errors import ConfigError, WorkloadError
from llem.workload import datasets_hf
from tests.conftest import FAST, run_in_process, run_llem

datasets = pytest.importorskip("datasets")
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
BYTES = "model.tokenizer=bytes"
ALPACA = {
    "instruction": ["Name three primary colours.", "Add the numbers.", "", "Summarise the text in one line."],
    "input": ["", "2 and 3", "", "Energy is measured in joules; power in watts."],
    "output": ["red, yellow, blue", "5", "", "Joules measure energy."],
}
SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "How do tides work?"}, {"from": "gpt", "value": "..."}]},
    {"id": "b", "conversations": [{"from": "system", "value": "be brief"},
                                  {"from": "human", "value": "Why ice floats?"}]},
    {"id": "c", "conversations": [{"from": "gpt", "value": "no human turn here"}]},
    {"id": "d", "conversations": [{"role": "user", "content": "What is a watt?"}]},
]
TEXTS = ["What is a joule?", "Explain batching on a GPU.", "Why do data centres need cooling?"]


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory):
    """In-process loads cache their Arrow files under tmp, not the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets_cache")))
    yield
    patch.undo()


def _build(compose_cfg, overrides):
    return workload.build(to_config(compose_cfg(overrides)))


def _texts(work):
    """The distinct prompts taken (a source with fewer than the count asked for is then repeated)."""
    return [r.text for r in work.requests[: len(work.requests) - work.repeated]]


# --- the built-in prompt set ---------------------------------------------------------------------


def test_builtin_prompt_set_ships_in_the_package():
    lines = workload.BUILTIN_PROMPTS.read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    assert all(0 < len(p) <= 300 and p == p.strip() for p in prompts)
    packaging = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "llem.workload" in packaging["packages"]
    rel = workload.BUILTIN_PROMPTS.relative_to(ROOT / "llem" / "workload").as_posix()
    assert any(fnmatch(rel, pattern) for pattern in packaging["package-data"]["llem.workload"])


def test_builtin_is_seeded_and_records_its_length_distribution(compose_cfg):
    a = _build(compose_cfg, ["dataset=builtin", BYTES, "dataset.num_requests=40", "input_len=48", "seed=1"])
    b = _build(compose_cfg, ["dataset=builtin", BYTES, "dataset.num_requests=40", "input_len=48", "seed=1"])
    c = _build(compose_cfg, ["dataset=builtin", BYTES, "dataset.num_requests=40", "input_len=48", "seed=2"])
    counts = a.counts()
    assert counts == b.counts() and counts.workload_sha256 != c.counts().workload_sha256
    lengths = np.array([r.input_tokens for r in a.requests])
    assert counts.num_requests == 40 == len(set(_texts(a)))
    assert counts.input_tokens_max == lengths.max() <= 48 and counts.input_tokens_min == lengths.min()
    assert counts.input_tokens_p50 == pytest.approx(np.median(lengths))
    assert counts.input_tokens_p90 == pytest.approx(np.percentile(lengths, 90))
    assert counts.input_tokens_mean == pytest.approx(lengths.mean())
    assert counts.prompts_truncated == sum(len(t.encode()) > 48 for t in _texts(a)) > 0
    assert counts.prompts_read == 40 and counts.prompts_dropped_short == counts.prompts_dropped_long == 0
    unshuffled = _build(compose_cfg, ["dataset=builtin", BYTES, "dataset.shuffle=false", "dataset.num_requests=3"])
    first = [json.loads(x)["prompt"] for x in workload.BUILTIN_PROMPTS.read_text().splitlines()[:3]]
    assert _texts(unshuffled) == first


# --- tokenizer rules --------------------------------------------------------------------------------


def test_bytes_tokenizer_counts_utf8_bytes_and_stays_in_the_vocab(compose_cfg, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("héllo\n")
    work = _build(compose_cfg, ["dataset=file", f"dataset.path={path}", BYTES])
    assert work.requests[0].token_ids == [b + 3 for b in "héllo".encode()]
    with pytest.raises(WorkloadError, match="vocab_size=100"):
        _build(compose_cfg, ["dataset=file", f"dataset.path={path}", BYTES, "model.architecture.vocab_size=100"])


def test_bytes_tokenizer_is_refused_for_pretrained_weights(compose_cfg):
    with pytest.raises(WorkloadError, match="weights=random"):
        _build(compose_cfg, ["dataset=builtin", BYTES, "model.weights=pretrained", "model.hf_id=org/model"])


def test_text_dataset_without_tokenizer_names_the_options(compose_cfg):
    with pytest.raises(WorkloadError, match="model.tokenizer.*bytes"):
        _build(compose_cfg, ["dataset=builtin", "model.tokenizer=null"])


def test_tiny_model_reads_text_datasets_offline_out_of_the_box(compose_cfg):
    work = _build(compose_cfg, ["dataset=builtin"])
    assert len(work.requests) >= 1 and all(r.input_tokens >= 1 for r in work.requests)


# --- length bounds ----------------------------------------------------------------------------------


def test_long_prompts_truncate_or_drop_and_short_ones_are_dropped(compose_cfg, tmp_path):
    path = tmp_path / "p.jsonl"
    prompts = ["a" * 5, "b" * 50, "", "c" * 20, "d" * 12]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    base = ["dataset=file", f"dataset.path={path}", BYTES, "input_len=30", "dataset.min_input_len=10"]
    work = _build(compose_cfg, [*base, "dataset.num_requests=2"])
    assert [r.input_tokens for r in work.requests] == [30, 20]
    assert work.counts().prompts_truncated == 1 and work.counts().prompts_dropped_short == 2
    assert work.counts().prompts_read == 4  # stopped once 2 fitted
    work = _build(compose_cfg, [*base, "dataset.long_prompts=drop", "dataset.num_requests=5"])
    assert _texts(work) == ["c" * 20, "d" * 12]
    assert [r.text for r in work.requests] == ["c" * 20, "d" * 12] * 2 + ["c" * 20]  # run out: repeated in turn
    c = work.counts()
    assert (c.prompts_read, c.prompts_dropped_short, c.prompts_dropped_long, c.prompts_truncated,
            c.prompts_repeated) == (5, 2, 1, 0, 3)
    with pytest.raises(WorkloadError, match="no prompt"):
        _build(compose_cfg, [*base, "dataset.long_prompts=drop", "dataset.min_input_len=25"])
    with pytest.raises(WorkloadError, match="min_input_len=40 is larger than input_len=30"):
        _build(compose_cfg, [*base, "dataset.min_input_len=40"])


@pytest.mark.parametrize("override, key", [
    ("dataset.long_prompts=cut", "dataset.long_prompts"),
    ("dataset.min_input_len=0", "dataset.min_input_len"),
    ("dataset.layout=chat", "dataset.layout"),
    ("dataset.hf_id=null", "dataset.hf_id"),
])
def test_bad_dataset_values_fail_at_validation_naming_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg(["dataset=alpaca", override]))


def test_the_shipped_groups_name_their_sources(compose_cfg):
    expected = {
        "alpaca": ("tatsu-lab/alpaca", "alpaca", None),
        "sharegpt": ("anon8231489123/ShareGPT_Vicuna_unfiltered", "sharegpt", "conversations"),
        "aienergyscore": ("AIEnergyScore/text_generation", "column", "text"),
    }
    for group, (hf_id, layout, column) in expected.items():
        ds = to_config(compose_cfg([f"dataset={group}"])).dataset
        assert (ds.name, ds.hf_id, ds.layout, ds.split, ds.shuffle) == (group, hf_id, layout, "train", True)
        assert column is None or ds.column == column
    ds = to_config(compose_cfg(["dataset=hf", "dataset.hf_id=org/name", "dataset.column=question"])).dataset
    assert (ds.name, ds.hf_id, ds.column) == ("hf", "org/name", "question")


def test_loading_llem_does_not_import_datasets():
    code = "import sys, llem.config, llem.workload, llem.workload.datasets_hf; assert 'datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_datasets_library_says_what_to_install(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(WorkloadError, match=r'pip install "\.\[datasets\]"'):
        _build(compose_cfg, ["dataset=alpaca", f"dataset.path={tmp_path}", BYTES])


# --- Hugging Face datasets from local copies -------------------------------------------------------


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    """One local copy per loader path: save_to_disk (DatasetDict), JSON array, Parquet, JSONL."""
    root = tmp_path_factory.mktemp("hf")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(ALPACA),
        "test": datasets.Dataset.from_dict({k: v[:1] for k, v in ALPACA.items()}),
    }).save_to_disk(str(root / "alpaca"))
    (root / "sharegpt.json").write_text(json.dumps(SHAREGPT))
    datasets.Dataset.from_dict({"text": TEXTS}).to_parquet(str(root / "aienergyscore.parquet"))
    (root / "questions.jsonl").write_text("".join(json.dumps({"question": t, "n": i}) + "\n" for i, t in
                                                  enumerate(TEXTS)))
    return root


def test_alpaca_from_save_to_disk_joins_instruction_and_input(compose_cfg, local_copies):
    base = ["dataset=alpaca", f"dataset.path={local_copies / 'alpaca'}", BYTES, "dataset.shuffle=false"]
    work = _build(compose_cfg, base)
    assert _texts(work) == ["Name three primary colours.", "Add the numbers.\n\n2 and 3",
                            "Summarise the text in one line.\n\nEnergy is measured in joules; power in watts."]
    assert work.counts().prompts_dropped_short == 1  # the empty record
    assert _texts(_build(compose_cfg, [*base, "dataset.split=test"])) == ["Name three primary colours."]
    with pytest.raises(WorkloadError, match=r"dataset.split='validation'.*\['test', 'train'\]"):
        _build(compose_cfg, [*base, "dataset.split=validation"])


def test_sharegpt_takes_the_first_human_turn(compose_cfg, local_copies):
    work = _build(compose_cfg, ["dataset=sharegpt", f"dataset.path={local_copies / 'sharegpt.json'}", BYTES,
                                "dataset.shuffle=false"])
    assert _texts(work) == ["How do tides work?", "Why ice floats?", "What is a watt?"]
    assert work.counts().prompts_dropped_short == 1 and work.counts().prompts_read == 4


def test_natural_lengths_follow_the_reference_completions(compose_cfg, local_copies):
    """output_len=null: a record's reference answer sets its length (in the model's tokens, here bytes);
    a record without one draws from dataset.output_lengths."""
    from llem.config import to_config
    from llem.workload.arrivals import shape

    work = _build(compose_cfg, ["dataset=alpaca", f"dataset.path={local_copies / 'alpaca'}", BYTES,
                                "dataset.shuffle=false", "output_len=null"])
    assert [r.output_len for r in work.requests[:4]] == [len("red, yellow, blue"), 1, len("Joules measure energy."), 17]
    config = to_config(compose_cfg(["dataset=sharegpt", f"dataset.path={local_copies / 'sharegpt.json'}", BYTES,
                                    "dataset.shuffle=false", "output_len=null", "dataset.num_requests=3"]))
    work = _build(compose_cfg, ["dataset=sharegpt", f"dataset.path={local_copies / 'sharegpt.json'}", BYTES,
                                "dataset.shuffle=false", "output_len=null"])
    assert work.requests[0].output_len == 3 and work.requests[1].output_len is None  # "...", no answer
    assert shape(work.requests, config).source == "reference+distribution" and work.requests[1].output_len >= 1
    fixed = _build(compose_cfg, ["dataset=alpaca", f"dataset.path={local_copies / 'alpaca'}", BYTES])
    assert all(r.output_len is None for r in fixed.requests)  # a fixed output_len ignores the references


def test_aienergyscore_and_generic_hf_columns(compose_cfg, local_copies):
    work = _build(compose_cfg, ["dataset=aienergyscore", f"dataset.path={local_copies / 'aienergyscore.parquet'}",
                                BYTES, "dataset.shuffle=false"])
    assert _texts(work) == TEXTS
    generic = ["dataset=hf", f"dataset.path={local_copies / 'questions.jsonl'}", BYTES, "dataset.column=question"]
    shuffled = _build(compose_cfg, [*generic, "seed=5"])
    assert sorted(_texts(shuffled)) == sorted(TEXTS)
    assert _texts(shuffled) == _texts(_build(compose_cfg, [*generic, "seed=5"]))
    with pytest.raises(WorkloadError, match=r"dataset.column='text'.*\['question', 'n'\]"):
        _build(compose_cfg, ["dataset=hf", f"dataset.path={local_copies / 'questions.jsonl'}", BYTES])
    with pytest.raises(WorkloadError, match="no such file"):
        _build(compose_cfg, ["dataset=hf", f"dataset.path={local_copies / 'nope'}", BYTES])


# --- the Hub: reachability and offline behaviour ----------------------------------------------------


class _Answer404(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hub_probe_answers_within_its_timeout(monkeypatch):
    """A hub that answers (even 404) is reachable; one that accepts and never answers costs the timeout only."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    server = HTTPServer(("127.0.0.1", 0), _Answer404)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    assert datasets_hf.hub_unreachable(timeout_s=5) is None
    server.server_close()
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.monotonic()
        why = datasets_hf.hub_unreachable(timeout_s=1)
        assert why and time.monotonic() - t0 < 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert datasets_hf.hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_unreachable_hub_and_no_cache_fails_fast_with_the_prefetch_hint(compose_cfg, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.monotonic()
    with pytest.raises(WorkloadError, match="hf download llem-tests/not-cached --repo-type dataset"):
        _build(compose_cfg, ["dataset=hf", "dataset.hf_id=llem-tests/not-cached", BYTES])
    assert time.monotonic() - t0 < 10


# --- end to end ---------------------------------------------------------------------------------------


def _offline_env(tmp_path, **extra):
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.update(extra)
    return env


def _row(tmp_path):
    return pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]


@pytest.mark.slow
@pytest.mark.parametrize("group, source, extra", [
    ("builtin", None, []),
    ("file", "questions.jsonl", ["dataset.field=question"]),
    ("alpaca", "alpaca", []),
    ("sharegpt", "sharegpt.json", []),
    ("aienergyscore", "aienergyscore.parquet", []),
    ("hf", "questions.jsonl", ["dataset.column=question"]),
])
def test_each_dataset_group_end_to_end(compose_cfg, tmp_path, local_copies, group, source, extra, monkeypatch):
    """Every dataset group through a whole job (workload, engine, writer), measured in-process, offline."""
    for name, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    args = [f"dataset={group}", BYTES, "input_len=24", "dataset.num_requests=3", *extra]
    if source:
        args.append(f"dataset.path={local_copies / source}")
    run_in_process(compose_cfg, args, tmp_path / "run")
    r = _row(tmp_path)
    assert r["status"] == "ok" and r["cfg.dataset.name"] == group
    req = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert len(req) == r["num_requests"] == 3
    assert r["input_tokens_total"] == req["input_tokens"].sum() and r["input_tokens_max"] <= 24
    assert r["input_tokens_p50"] == pytest.approx(np.median(req["input_tokens"]))
    for column in ("prompts_read", "prompts_truncated", "prompts_dropped_short", "prompts_dropped_long"):
        assert r[column] >= 0
    assert r["workload_sha256"]


@pytest.mark.slow
def test_alpaca_reads_a_prefetched_hub_snapshot_offline(compose_cfg, tmp_path, monkeypatch):
    """What `hf download tatsu-lab/alpaca --repo-type dataset` leaves in the Hub cache is enough offline
    (a whole job, measured in-process)."""
    repo = tmp_path / "hf_home" / "hub" / "datasets--tatsu-lab--alpaca"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    data = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567" / "data"
    data.mkdir(parents=True)
    datasets.Dataset.from_dict(ALPACA).to_parquet(str(data / "train-00000-of-00001.parquet"))
    for name, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    # huggingface_hub read HF_HOME when it was imported: its cache is pointed where HF_HOME now says
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    run_in_process(compose_cfg, ["dataset=alpaca", BYTES, "input_len=64", "dataset.num_requests=3"], tmp_path / "run")
    r = _row(tmp_path)
    assert r["status"] == "ok" and r["num_requests"] == 3 and r["prompts_dropped_short"] == 1
    expected = sorted(len(t.encode()) for t in ["Name three primary colours.", "Add the numbers.\n\n2 and 3"])
    lengths = sorted(pd.read_parquet(tmp_path / "run" / "requests.parquet")["input_tokens"])
    assert set(expected) <= set(lengths)


@pytest.mark.slow
def test_alpaca_with_no_network_and_empty_cache_fails_within_seconds(tmp_path):
    """A whole run, offline (the unreachable-Hub path is tested in-process above)."""
    env = _offline_env(tmp_path)
    t0 = time.monotonic()
    proc = run_llem([*FAST, "dataset=alpaca", BYTES, "hydra.run.dir=run"], cwd=tmp_path, env_extra=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1 and elapsed < 60, elapsed
    out = proc.stdout + proc.stderr
    assert "hf download tatsu-lab/alpaca --repo-type dataset" in out and "loaded" not in out
    r = _row(tmp_path)
    assert r["status"] == "failed" and r["error_stage"] == "workload"
    assert "huggingface-cli download tatsu-lab/alpaca --repo-type dataset" in r["error"]
