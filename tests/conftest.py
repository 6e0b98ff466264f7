"""Shared fixtures: compose llem's real config (Hydra's compose API) and run llem as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from llem.backends import register_all
from llem.config import conf_dir

register_all()


@pytest.fixture(scope="package")
def compose_cfg():
    """compose_cfg(overrides) → the DictConfig a job would receive."""

    def _compose(overrides: List[str] = ()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture(scope="session")
def trace():
    """The real H100 NVML trace (tests/data/), for replay tests."""
    from tests.replay import trace_or_fail

    return trace_or_fail()


# Fast settings for end-to-end runs on CPU: few short requests, no waits.
FAST = [
    "dataset.num_requests=4",
    "input_len=16",
    "output_len=8",
    "batch=2",
    "baseline.settle_s=0",
    "baseline.loaded_idle_s=0",
]


def run_llem(args: List[str], cwd: Path, env_extra: dict = None, check: bool = False, timeout: int = 300):
    """``python -m llem ARGS`` in a subprocess, from ``cwd`` (the installed or source package)."""
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "llem", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"llem failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
