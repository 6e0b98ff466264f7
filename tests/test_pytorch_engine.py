"""The PyTorch engine on CPU with the tiny random model: exact output length, real token times."""

from __future__ import annotations

import pytest

from llem.backends import engine_class
from llem.config import to_config
from llem.workload import Request

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def engine(compose_cfg):
    config = to_config(compose_cfg(["batch=3", "device=cpu"]))
    eng = engine_class("pytorch")(config, "cpu")
    eng.check()
    eng.load()
    yield eng
    eng.close()


def test_generates_exactly_output_len_with_token_times(engine):
    reqs = [Request(i, [5 + i] * (4 + i)) for i in range(5)]  # different lengths → left padding
    done = []
    out = engine.generate(reqs, 6, done.append)
    assert [o.request_id for o in out] == [0, 1, 2, 3, 4]
    assert [o.output_tokens for o in out] == [6] * 5
    assert [o.input_tokens for o in out] == [4, 5, 6, 7, 8]
    assert [o.batch_index for o in out] == [0, 0, 0, 1, 1]
    assert sum(done) == 5
    for o in out:
        assert len(o.token_times_s) == 6
        assert o.start_s < o.first_token_s <= o.token_times_s[-1] == o.end_s
        assert o.token_times_s == sorted(o.token_times_s)


def test_min_tokens_suppresses_eos(engine):
    """A prompt full of EOS still yields the full length: EOS is suppressed until output_len."""
    eos = sorted(engine._eos)[0]
    out = engine.generate([Request(0, [eos] * 8)], 12, lambda n: None)
    assert out[0].output_tokens == 12


def test_count_stops_at_first_eos(engine):
    import torch

    eos = sorted(engine._eos)[0]
    counts = engine._count_generated(torch.tensor([[7, eos, 0, 0], [7, 8, 9, eos], [7, 8, 9, 10]]))
    assert counts == [2, 4, 4]


def test_info_reports_parameters(engine):
    info = engine.info()
    assert info.num_parameters == sum(p.numel() for p in engine.model.parameters())
    assert info.weight_bytes == info.num_parameters * 4  # float32
    assert "torch" in info.versions and engine.memory_peak_mb() is None  # CPU: no device memory peak


def test_sampling_still_gives_exact_length(compose_cfg):
    config = to_config(compose_cfg(["device=cpu", "decoding.temperature=1.0", "decoding.top_k=20", "batch=2"]))
    eng = engine_class("pytorch")(config, "cpu")
    eng.check()
    eng.load()
    out = eng.generate([Request(0, [5] * 4), Request(1, [6] * 4)], 9, lambda n: None)
    assert [o.output_tokens for o in out] == [9, 9]
