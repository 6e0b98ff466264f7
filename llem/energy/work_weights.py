"""The two weights of the ``work`` attribution rule — adjusted J per prompt token and per output token —
where they come from, and the calibration that keeps them for jobs that cannot measure them.

Measured in the job (``prefill_pass``): the prefill pass (``measure.prefill``) gives adjusted J per prompt
token; J per output token is the rest of the window's adjusted energy over its output tokens,
``(window adjusted − J per prompt token × prompt tokens charged) / output tokens``. The whole window is
used rather than the steady state so that a light load, which has none, still has a weight, and so the
two weights together account for the whole window.

Calibration (``calibration``): a job that measured both writes them into a small JSON file in
``cache_dir`` keyed by the engine, its package versions, the model, its dtype and the GPU's name; a job
that cannot measure them (no prefill pass) reads them from there. Neither: the ``output_tokens`` rule
is used and the row says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

CALIBRATION_DIR = "energy_attribution"  # under cache_dir: one JSON file per engine build + model + card
PREFILL_PASS, CALIBRATION = "prefill_pass", "calibration"


@dataclass
class Weights:
    """J per prompt token and per output token (adjusted), their source, and why there are none."""

    j_per_prompt_token: Optional[float] = None
    j_per_output_token: Optional[float] = None
    source: Optional[str] = None  # prefill_pass | calibration
    null_reason: Optional[str] = None

    @property
    def usable(self) -> bool:
        p, o = self.j_per_prompt_token, self.j_per_output_token
        return p is not None and o is not None and p >= 0 and o > 0


def from_prefill_pass(j_per_prompt_token: Optional[float], window_adjusted_j: Optional[float],
                      prompt_tokens_charged: int, output_tokens: int) -> Weights:
    """The weights measured in this job, or why they cannot be."""
    if j_per_prompt_token is None:
        return Weights(null_reason="the prefill pass gave no adjusted J per prompt token (no GPU energy or no "
                                   "baseline)")
    if j_per_prompt_token < 0:
        return Weights(null_reason=f"the prefill pass's adjusted J per prompt token is negative "
                                   f"({j_per_prompt_token:.3g}): the baseline is above its power")
    if window_adjusted_j is None or output_tokens <= 0:
        return Weights(null_reason="the window has no adjusted energy or no output token")
    decode_j = window_adjusted_j - j_per_prompt_token * prompt_tokens_charged
    if decode_j <= 0:
        return Weights(null_reason=f"the window's adjusted energy ({window_adjusted_j:.1f} J) is not above its "
                                   f"prompt work by the prefill pass ({j_per_prompt_token * prompt_tokens_charged:.1f}"
                                   " J): no energy is left for the output tokens")
    return Weights(j_per_prompt_token, decode_j / output_tokens, PREFILL_PASS)


def calibration_key(engine: str, versions: Dict[str, str], model: str, dtype: str, gpu_name: str) -> Dict[str, Any]:
    """What a calibration holds for: the engine and its packages' versions, the model, its dtype, the GPU."""
    return {"engine": engine, "versions": dict(sorted(versions.items())), "model": model, "dtype": dtype,
            "gpu_name": gpu_name}


def _file(cache_dir: Path, key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / CALIBRATION_DIR / f"{digest}.json"


def record(cache_dir: Path, key: Dict[str, Any], weights: Weights, job: str) -> None:
    """Keep weights measured in a job for later jobs of the same engine build, model and card (atomically;
    a failure only logs)."""
    if weights.source != PREFILL_PASS or not weights.usable:
        return
    path = _file(cache_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "j_per_prompt_token": weights.j_per_prompt_token,
                                   "j_per_output_token": weights.j_per_output_token, "job": job,
                                   "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                  indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("energy attribution weights not kept for later jobs: %s", exc)


def recorded(cache_dir: Path, key: Dict[str, Any]) -> Weights:
    """The weights a calibration holds for ``key``, or why there are none."""
    path = _file(cache_dir, key)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Weights(null_reason=f"no calibration for {key['engine']} {key['model']} {key['dtype']} on "
                                   f"{key['gpu_name']} (a job with measure.prefill=true records one)")
    except (OSError, ValueError) as exc:
        return Weights(null_reason=f"the calibration {path.name} could not be read ({type(exc).__name__})")
    if not isinstance(data, dict) or data.get("key") != key:
        return Weights(null_reason=f"the calibration {path.name} holds another key")
    p, o = data.get("j_per_prompt_token"), data.get("j_per_output_token")
    weights = Weights(p, o, CALIBRATION) if all(isinstance(x, (int, float)) for x in (p, o)) else Weights()
    if not weights.usable:
        return Weights(null_reason=f"the calibration {path.name} holds no usable weights")
    return weights


def choose(rule: str, measured: Weights, calibrated: Optional[Weights]) -> Weights:
    """The weights the job uses: its own, else the calibration's; none (the output-token rule) with the
    reasons of both."""
    if rule != "work":
        return Weights(null_reason=f"measure.energy_attribution={rule}")
    if measured.usable:
        return measured
    if calibrated is not None and calibrated.usable:
        return calibrated
    why = "; ".join(w.null_reason for w in (measured, calibrated) if w is not None and w.null_reason)
    return Weights(null_reason=f"{why}: the output-token rule is used")
