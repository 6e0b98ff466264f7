"""Conversations in llem's process: which requests are due and when (a turn waits for the turn before it to
finish, then its think time), vLLM and TensorRT-LLM following turns, and PyTorch, which cannot, refused
before anything loads."""

from __future__ import annotations

import time

import pytest

from llem.backends import engine_class
from llem.backends._due import Schedule
from llem.backends.tensorrt import TensorRTEngine
from llem.backends.vllm import VllmEngine
from llem.config import to_config
from llem.support.errors import ConfigError
from llem.workload.records import Request
from tests.test_tensorrt_engine import fake_trt  # noqa: F401 - a fixture
from tests.test_vllm_engine import fake_vllm  # noqa: F401 - a fixture


def _conversations(n, turns, think_s, arrivals=None):
    """``n`` conversations of ``turns`` turns each; first turns at ``arrivals`` (seconds after t0) if given."""
    out = []
    for c in range(n):
        previous = None
        for t in range(turns):
            r = Request(len(out), [1, 2], conversation_index=c, turn_index=t, after=previous,
                        think_s=think_s if previous is not None else 0.0,
                        arrival_s=arrivals[c] if arrivals and t == 0 else None)
            out.append(r)
            previous = r.request_id
    return out


def test_a_turn_is_held_until_the_turn_before_it_finished_plus_its_think_time():
    first, second = _conversations(1, 2, think_s=0.5)
    schedule = Schedule([first, second], t0=10.0, closed=None, cap=None)
    assert schedule.admit(10.0) == [(first, 10.0)]
    assert schedule.admit(99.0) == [] and schedule.next_ready() is None and schedule.waiting
    schedule.finished(first.request_id, 12.0)
    assert schedule.next_ready() == 12.5 and schedule.admit(12.4) == []
    assert schedule.admit(12.6) == [(second, 12.5)]  # due at finish + think: admitted late counts as lateness
    assert not schedule.waiting


def test_first_turns_follow_the_arrival_process():
    reqs = _conversations(2, 2, think_s=0.0, arrivals=[0.0, 3.0])
    schedule = Schedule(reqs, t0=10.0, closed=None, cap=None)
    assert [r.request_id for r, _ in schedule.admit(11.0)] == [0]
    assert schedule.next_ready() == 13.0
    assert schedule.admit(13.0) == [(reqs[2], 13.0)]


def test_conversations_interleave():
    a0, a1, b0, b1 = _conversations(2, 2, think_s=1.0)
    schedule = Schedule([a0, a1, b0, b1], t0=0.0, closed=None, cap=None)
    assert [r for r, _ in schedule.admit(0.0)] == [a0, b0]
    schedule.finished(b0.request_id, 2.0)
    assert schedule.admit(3.0) == [(b1, 3.0)]  # conversation b goes on while a's first turn still runs
    schedule.finished(a0.request_id, 4.0)
    assert schedule.admit(5.0) == [(a1, 5.0)]


def test_the_cap_holds_a_ready_turn_until_a_slot_frees():
    a0, a1, b0, _ = _conversations(2, 2, think_s=0.0)
    schedule = Schedule([a0, a1, b0], t0=0.0, closed=None, cap=1)
    assert schedule.admit(0.0) == [(a0, 0.0)]
    assert schedule.admit(1.0) == []  # b0 is due but the one slot is taken
    schedule.finished(a0.request_id, 2.0)
    assert schedule.admit(2.0) == [(b0, 0.0)]  # open: due at its arrival, the wait for a slot counts
    schedule.finished(b0.request_id, 3.0)
    assert schedule.admit(3.0) == [(a1, 2.0)]


def test_a_closed_loop_turn_is_due_when_both_its_think_time_passed_and_a_slot_freed():
    a0, a1, b0, b1 = _conversations(2, 2, think_s=5.0)
    schedule = Schedule([a0, a1, b0, b1], t0=0.0, closed=1, cap=1)
    assert schedule.admit(0.0) == [(a0, 0.0)]
    schedule.finished(a0.request_id, 1.0)
    assert schedule.admit(1.0) == [(b0, 1.0)]  # due when a0's slot freed
    schedule.finished(b0.request_id, 2.0)
    assert schedule.admit(6.0) == [(a1, 6.0)]  # its think time ends after the slot freed


def test_a_turn_whose_predecessor_is_not_in_the_call_is_due_as_a_first_turn():
    _, second = _conversations(1, 2, think_s=1.0)
    schedule = Schedule([second], t0=4.0, closed=None, cap=None)
    assert schedule.admit(4.0) == [(second, 4.0)]


def test_vllm_adds_a_turn_only_after_the_turn_before_it_finished(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=4",
                                    "dataset=conversations", f"cache_dir={tmp_path}"]))
    engine = VllmEngine(config, "cuda")
    engine.load()
    think_s = 0.03
    reqs = _conversations(2, 3, think_s=think_s)
    out = {r.request_id: r for r in engine.generate(reqs, 3, lambda n: None)}
    assert all(r.output_tokens == 3 and r.error is None for r in out.values())
    for r in reqs:
        if r.after is not None:
            before = out[r.after]
            assert out[r.request_id].arrival_s >= before.end_s + think_s  # due no earlier than finish + think
            assert out[r.request_id].start_s >= out[r.request_id].arrival_s
    added = [rid for rid, _ in engine.llm.llm_engine.added]
    assert added[:2] == ["llem-0", "llem-3"]  # both first turns at once: the conversations interleave


def test_vllm_sleeps_through_a_think_time_when_nothing_is_in_flight(compose_cfg, fake_vllm, tmp_path):  # noqa: F811
    config = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=4",
                                    "dataset=conversations", f"cache_dir={tmp_path}"]))
    engine = VllmEngine(config, "cuda")
    engine.load()
    t0 = time.perf_counter()
    out = engine.generate(_conversations(1, 2, think_s=0.2), 2, lambda n: None)
    assert time.perf_counter() - t0 >= 0.2 and out[1].arrival_s - out[0].end_s >= 0.2


def test_pytorch_refuses_conversations_in_process_naming_the_key_why_and_what_to_use(compose_cfg):
    config = to_config(compose_cfg(["backend=pytorch", "dataset=conversations"]))
    with pytest.raises(ConfigError, match=r"dataset=conversations is not honoured by backend=pytorch in-process: "
                                          r"it runs static batches.*backend=vllm.*server=launch"):
        engine_class("pytorch").validate_config(config)


@pytest.mark.parametrize("overrides", [["backend=vllm", "model=llama3", "model.weights=random"],
                                       ["backend=tensorrt", "model=tiny"]])
def test_engines_that_follow_turns_take_conversations_in_process(compose_cfg, overrides):
    config = to_config(compose_cfg([*overrides, "dataset=conversations"]))
    engine_class(config.backend.name).validate_config(config)  # no error


def test_a_server_takes_conversations_whatever_the_engine(compose_cfg):
    config = to_config(compose_cfg(["backend=pytorch", "dataset=conversations", "server=launch"]))
    engine_class("pytorch").validate_config(config)


@pytest.mark.parametrize("overrides", [[], ["load.max_concurrency=1"]])
def test_tensorrt_submits_a_turn_only_after_the_turn_before_it_finished(compose_cfg, fake_trt,  # noqa: F811
                                                                         overrides):
    config = to_config(compose_cfg(["backend=tensorrt", "model=tiny", "batch=2", "dataset=conversations",
                                    *overrides]))
    engine = TensorRTEngine(config, "cuda")
    engine.load()
    think_s = 0.03
    reqs = _conversations(2, 2, think_s=think_s)
    out = {r.request_id: r for r in engine.generate(reqs, 3, lambda n: None)}
    assert all(r.output_tokens == 3 for r in out.values())
    for r in reqs:
        if r.after is not None:
            assert out[r.request_id].arrival_s >= out[r.after].end_s + think_s
            assert out[r.request_id].start_s >= out[r.request_id].arrival_s
