"""The measured window's energy split over its requests (``measure.energy_attribution``): the weights
chosen (:mod:`llem.energy.work_weights`), the rule applied (:mod:`llem.energy.attribution`), every
request's figures under it and under the output-token rule beside it, and the row's account of both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from llem.energy import attribution, work_weights
from llem.energy.work_weights import Weights
from llem.results.attribution import EnergyAttribution
from llem.results.tables import RequestRow
from llem.workload.records import RequestResult

log = logging.getLogger(__name__)


def attribute(cfg: Any, req_rows: Sequence[RequestRow], outputs: Sequence[RequestResult], samples: List[dict],
              window: Any, baseline_power_w: Optional[float], window_adjusted_j: Optional[float], prefill: Any,
              prefilled: Sequence[RequestResult], versions: dict, gpu_name: Optional[str],
              job: str) -> EnergyAttribution:
    """Each request's share of the window's energy into its row, and the row's account of it (a fallback to the
    output-token rule says why in ``attribution_null_reason``). ``window_adjusted_j``: the row's
    ``gpu_energy_adjusted_j``; ``prefill``: the prefill pass's columns (PrefillDecode) and ``prefilled`` what it
    returned, where it ran."""
    weights = job_weights(cfg, outputs, window_adjusted_j, prefill_weight(prefill, prefilled), versions, gpu_name,
                          job)
    part = into_rows(req_rows, outputs, samples, window.t0, window.t1, window.energy_j, baseline_power_w, weights)
    if cfg.measure.energy_attribution.value == "work" and part.energy_attribution != "work" and gpu_name:
        log.info("energy per request is split by output tokens, not by work: %s", part.attribution_null_reason)
    return part


def prefill_weight(prefill: Any, prefilled: Sequence[RequestResult]) -> Optional[float]:
    """Adjusted J per prompt token charged in the prefill pass: its adjusted energy over the prompt tokens it
    processed, less those its engine or server said it served from a prefix cache (its first pass over these
    prompts may have filled that cache)."""
    if prefill is None or prefill.prefill_energy_adjusted_j is None:
        return None
    charged = sum(attribution.prompt_tokens_charged(o) for o in prefilled if o.error is None)
    if not charged:
        return prefill.prefill_j_per_input_token
    return prefill.prefill_energy_adjusted_j / charged


def job_weights(cfg: Any, outputs: Sequence[RequestResult], window_adjusted_j: Optional[float],
                j_per_prompt_token: Optional[float], versions: dict, gpu_name: Optional[str],
                job: str) -> Weights:
    """The work rule's weights for this job: its own prefill pass's (kept as the calibration of its engine
    build, model and card), else that calibration's, else none with the reasons."""
    rule = cfg.measure.energy_attribution.value
    if rule != "work":
        return work_weights.choose(rule, Weights(), None)
    if cfg.measure.prefill:
        charged = sum(attribution.prompt_tokens_charged(o) for o in outputs if attribution.got_a_token(o))
        measured = work_weights.from_prefill_pass(j_per_prompt_token, window_adjusted_j, charged,
                                                  sum(o.output_tokens for o in outputs))
    else:
        measured = Weights(null_reason="measure.prefill=false: no prefill pass in this job")
    calibrated = None
    if not gpu_name:
        calibrated = Weights(null_reason="no GPU: no calibration is kept or read")
    elif not versions:
        calibrated = Weights(null_reason="the engine's package versions are unknown (a server): no calibration is "
                                         "kept or read")
    else:
        key = work_weights.calibration_key(cfg.backend.name, versions, cfg.model.name, cfg.model.dtype.value,
                                           gpu_name)
        cache = Path(cfg.cache_dir)
        if measured.usable:
            work_weights.record(cache, key, measured, job)
        else:
            calibrated = work_weights.recorded(cache, key)
    return work_weights.choose(rule, measured, calibrated)


def into_rows(req_rows: Sequence[RequestRow], outputs: Sequence[RequestResult], samples: List[dict], t0: float,
              t1: float, energy_j: Optional[float], baseline_power_w: Optional[float],
              weights: Weights) -> EnergyAttribution:
    """Each request's energy by the chosen rule and by the output-token rule into its row (matched by
    request id); the row's account of the rule and its weights."""
    by_tokens = attribution.output_tokens_rule(samples, outputs, t0, t1, energy_j, baseline_power_w)
    if weights.usable:
        chosen = attribution.work_rule(samples, outputs, t0, t1, energy_j, baseline_power_w,
                                       weights.j_per_prompt_token, weights.j_per_output_token)
        rule = "work"
    else:
        chosen, rule = by_tokens, "output_tokens"
    by_id = {r.request_id: i for i, r in enumerate(outputs)}
    for row in req_rows:
        i = by_id[row.request_id]
        row.energy_j, row.energy_adjusted_j = chosen.raw_j[i], chosen.adjusted_j[i]
        row.energy_prompt_adjusted_j, row.energy_output_adjusted_j = chosen.prompt_adjusted_j[i], \
            chosen.output_adjusted_j[i]
        row.energy_output_tokens_rule_j = by_tokens.raw_j[i]
        row.energy_output_tokens_rule_adjusted_j = by_tokens.adjusted_j[i]
    reasons = [why for why in (chosen.null_reason, weights.null_reason) if why]
    cached = [o.prompt_tokens_cached for o in outputs if o.prompt_tokens_cached is not None]
    return EnergyAttribution(energy_attribution=rule, attribution_j_per_prompt_token=weights.j_per_prompt_token,
                             attribution_j_per_output_token=weights.j_per_output_token,
                             attribution_weights_source=weights.source,
                             attribution_null_reason="; ".join(reasons) or None,
                             prompt_tokens_cached_total=sum(cached) if cached else None)
