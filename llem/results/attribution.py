"""How the measured window's energy was split over its requests (``measure.energy_attribution``): the
rule used, its two weights and where they came from (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llem.results.schema import col


@dataclass
class EnergyAttribution:
    """The rule behind requests.parquet's ``energy_j`` and ``energy_adjusted_j``, and its weights."""

    energy_attribution: Optional[str] = col("the rule that split the window's energy over the requests: work (by "
                                            "the prompt and output work each caused) or output_tokens (by the "
                                            "output tokens each produced); output_tokens where the work rule's "
                                            "weights could not be had (attribution_null_reason)")
    attribution_j_per_prompt_token: Optional[float] = col("the work rule's adjusted J per prompt token charged "
                                                          "(prompt tokens less those served from a prefix cache)")
    attribution_j_per_output_token: Optional[float] = col("the work rule's adjusted J per output token")
    attribution_weights_source: Optional[str] = col("where the two weights came from: prefill_pass (this job's "
                                                    "prefill pass and window) or calibration (an earlier job of "
                                                    "the same engine build, model, dtype and GPU); null: none")
    attribution_null_reason: Optional[str] = col("why the work rule's weights are null, or why no request has an "
                                                 "energy, when so")
    prompt_tokens_cached_total: Optional[int] = col("prompt tokens the engine or server said it served from its "
                                                    "prefix cache, summed (null: none said)")
