"""Requests: seeded random token ids; prompts from files with a real (locally built) tokenizer."""

from __future__ import annotations

import json

import pytest

from llem import workload
from llem.config import to_config
from llem.support.errors import WorkloadError


def test_random_requests_are_seeded_and_exact_length():
    a = workload.random_requests(5, 33, 1000, seed=7, avoid={0, 1, 2})
    b = workload.random_requests(5, 33, 1000, seed=7, avoid={0, 1, 2})
    c = workload.random_requests(5, 33, 1000, seed=8, avoid={0, 1, 2})
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert all(r.input_tokens == 33 for r in a)
    ids = {t for r in a for t in r.token_ids}
    assert not ids & {0, 1, 2} and max(ids) < 1000


def test_random_dataset_from_config(compose_cfg):
    config = to_config(compose_cfg(["dataset.num_requests=3", "input_len=10", "seed=3"]))
    work = workload.build(config)
    assert work.counts().num_requests == 3
    assert work.counts().input_tokens_total == 30
    special = workload.special_token_ids(config.model.architecture)
    assert special and not special & {t for r in work.requests for t in r.token_ids}
    counts = work.counts()
    assert (counts.input_tokens_min, counts.input_tokens_p50, counts.input_tokens_p90,
            counts.input_tokens_max) == (10, 10.0, 10.0, 10)
    assert counts.prompts_read == 3 and counts.prompts_truncated == counts.prompts_dropped_long == 0
    again = workload.build(to_config(compose_cfg(["dataset.num_requests=3", "input_len=10", "seed=3"])))
    other = workload.build(to_config(compose_cfg(["dataset.num_requests=3", "input_len=10", "seed=4"])))
    assert counts.workload_sha256 == again.counts().workload_sha256 != other.counts().workload_sha256
    longer = workload.build(config, 40)  # sized up after the warm-up: the first requests stay the same
    assert [r.token_ids for r in longer.requests[:3]] == [r.token_ids for r in work.requests]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A real word-level tokenizer, trained here on a few sentences (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = "the a energy of one token on a gpu is measured in joules per second and watts".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)] * 3, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"])
    )
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    return path


def test_file_dataset_jsonl_and_truncation(compose_cfg, tmp_path, tokenizer_dir):
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "the energy of one token"}, {"prompt": " ".join(["watts"] * 50)}, {"other": 1}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n")
    config = to_config(
        compose_cfg(["dataset=file", f"dataset.path={path}", f"model.tokenizer={tokenizer_dir}", "input_len=20"])
    )
    work = workload.build(config, 2)
    assert [r.input_tokens for r in work.requests] == [5, 20]
    assert work.truncated == 1 and work.requests[0].text == "the energy of one token"
    path.write_text(json.dumps(lines[2]) + "\n")
    with pytest.raises(WorkloadError, match="dataset.field"):
        workload.build(config)


def test_text_file_and_missing_file(compose_cfg, tmp_path, tokenizer_dir):
    path = tmp_path / "prompts.txt"
    path.write_text("the gpu\n\njoules per second\n")
    config = to_config(compose_cfg(["dataset=file", f"dataset.path={path}", f"model.tokenizer={tokenizer_dir}"]))
    assert [r.input_tokens for r in workload.build(config, 2).requests] == [2, 3]
    more = workload.build(config, 5)  # the file runs out: its prompts are repeated in turn, and counted
    assert [r.input_tokens for r in more.requests] == [2, 3, 2, 3, 2] and more.repeated == 3
    assert [r.request_id for r in more.requests] == list(range(5)) and more.counts().prompts_repeated == 3
    config = to_config(compose_cfg(["dataset=file", f"dataset.path={tmp_path}/nope.txt"]))
    with pytest.raises(WorkloadError, match="no such file"):
        workload.build(config)


def test_text_dataset_without_tokenizer_fails_clearly(compose_cfg, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    config = to_config(compose_cfg(["dataset=file", f"dataset.path={path}", "model.tokenizer=null"]))
    with pytest.raises(WorkloadError, match="model.tokenizer"):
        workload.build(config)
