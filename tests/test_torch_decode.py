"""llem's own decode loop (backend.decode_loop=llem) on CPU with the tiny random model: the same
tokens as transformers' generate, exact lengths, real step times, sampling rules, validation.
The CUDA-graph capture runs only on a GPU (marked ``gpu``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llem.backends import engine_class
from llem.config import to_config
from llem.support.errors import ConfigError
from llem.workload.records import Request

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

LOOP = ["backend.decode_loop=llem", "backend.cache_implementation=static"]


def _padding(counts) -> float:
    return (counts.tokens_computed - counts.tokens_requested) / counts.tokens_requested


def _engine(compose_cfg, overrides, device="cpu"):
    config = to_config(compose_cfg([f"device={device}", *LOOP, *overrides]))
    eng = engine_class("pytorch")(config, device)
    eng.validate_config(config)
    eng.check()
    eng.load()
    return eng


# large random weights: attention, positions and padding visibly change the logits, so a wrong
# position, mask or cache slot changes the tokens (with the default 0.02 init they barely would)
SHARP = ["+model.architecture.initializer_range=1.0"]


@pytest.fixture(scope="module")
def engine(compose_cfg):
    eng = _engine(compose_cfg, ["batch=3", "input_len=10", "output_len=6", *SHARP])
    yield eng
    eng.close()


def _varied(n):
    return [Request(i, [5 + i] * (4 + i)) for i in range(n)]  # different lengths → left padding


def _generate_tokens(runner, ids, mask, n):
    with torch.inference_mode():
        out = runner.model.generate(input_ids=ids, attention_mask=mask, generation_config=runner._generation_config(n))
    return out[:, ids.shape[1]:]


def test_same_tokens_as_generate_with_left_padding(engine):
    runner = engine._runner
    ids, mask = runner._batch_tensors(_varied(3), 3, 10)
    assert (mask == 0).any()  # the batch really is left padded
    tokens, times = runner.decoder.run(ids, mask)
    assert torch.equal(tokens, _generate_tokens(runner, ids, mask, 6))
    assert len(times) == 6 and times == sorted(times)


def test_results_exact_length_times_and_counts(engine):
    done = []
    out = engine.generate(_varied(4), 6, done.append)
    assert [o.output_tokens for o in out] == [6] * 4 and sum(done) == 4
    for o in out:
        assert len(o.token_times_s) == 6
        assert o.start_s < o.first_token_s <= o.token_times_s[-1] == o.end_s
    assert [o.batch_index for o in out] == [0, 0, 0, 1]
    assert engine.work_counts().tokens_computed == 2 * 3 * (10 + 6)  # every batch padded to 3 × 10


def test_shorter_runs_reuse_the_loop_and_longer_ones_are_refused(engine):
    out = engine.generate(_varied(2), 1, lambda n: None)  # the prefill pass: one token each
    assert [o.output_tokens for o in out] == [1, 1] and all(len(o.token_times_s) == 1 for o in out)
    ids, mask = engine._runner._batch_tensors(_varied(3), 3, 10)
    with pytest.raises(ValueError, match="up to 6 new tokens"):
        engine._runner.decoder.run(ids, mask, 7)


def test_info_names_the_loop(engine):
    args = engine.info().resolved
    assert args.decode_loop == "llem" and args.cuda_graph is False  # no graph on the CPU


def test_warmup_longer_than_output_fits(compose_cfg):
    eng = _engine(compose_cfg, ["batch=1", "input_len=8", "output_len=3", "warmup.output_len=5"])
    try:
        assert eng._runner.decoder.output_len == 5
        assert eng.generate(_varied(1), 5, lambda n: None)[0].output_tokens == 5
    finally:
        eng.close()


def _choose(temperature=0.0, top_p=1.0, top_k=0, eos=(0,)):
    from llem.backends._torch_decode import Decoder

    d = Decoder.__new__(Decoder)  # only the token rule: no model
    d.torch, d.decoding = torch, SimpleNamespace(temperature=temperature, top_p=top_p, top_k=top_k)
    d.eos = torch.tensor(list(eos)) if eos else None
    return d._choose


def test_eos_is_never_chosen():
    logits = torch.tensor([[9.0, 1.0, 2.0, 0.5], [9.0, 0.1, 0.2, 3.0]])
    assert _choose()(logits).tolist() == [2, 3]
    torch.manual_seed(0)
    sampled = _choose(temperature=5.0)(logits.repeat(200, 1))
    assert (sampled != 0).all()


def test_top_k_one_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    greedy = _choose(eos=())(logits)
    assert torch.equal(_choose(temperature=1.0, top_k=1, eos=())(logits), greedy)
    assert torch.equal(_choose(temperature=1.0, top_p=1e-6, eos=())(logits), greedy)


def test_top_k_keeps_draws_inside_the_k_best():
    torch.manual_seed(1)
    logits = torch.randn(1, 30).repeat(500, 1)
    best = set(torch.topk(logits[0], 3).indices.tolist())
    draws = set(_choose(temperature=2.0, top_k=3, eos=())(logits).tolist())
    assert draws <= best and len(draws) > 1  # sampled, not greedy


@pytest.mark.parametrize("override, key", [
    ("backend.cache_implementation=dynamic", "backend.cache_implementation"),
    ("backend.quantization.method=bnb_nf4", "backend.quantization.method"),
    ("backend.device_map=auto", "backend.device_map"),
    ("+backend.generate_args.repetition_penalty=1.1", "backend.generate_args"),
])
def test_incompatible_options_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        to_config(compose_cfg([*LOOP, override]))


def test_unknown_loop_names_the_key(compose_cfg):
    with pytest.raises(ConfigError, match="backend.decode_loop"):
        to_config(compose_cfg(["backend.decode_loop=fast"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captured_graph_gives_the_uncaptured_tokens(compose_cfg):
    eng = _engine(compose_cfg, ["batch=2", "input_len=12", "output_len=8", *SHARP], device="cuda")
    try:
        runner = eng._runner
        assert runner.decoder.graph is not None and eng.info().resolved.cuda_graph is True
        ids, mask = runner._batch_tensors(_varied(2), 2, 12)
        tokens, times = runner.decoder.run(ids, mask)
        assert torch.equal(tokens, _generate_tokens(runner, ids, mask, 8))
        assert len(times) == 8 and times == sorted(times)
    finally:
        eng.close()
