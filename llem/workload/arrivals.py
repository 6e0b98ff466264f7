"""When requests arrive and how long each asks to be: the load side of a workload.

Arrivals (``load.request_rate``, ``load.burstiness``): the gaps between consecutive requests are drawn
from a gamma distribution of shape ``burstiness`` and mean ``1 / request_rate`` — shape 1 is a Poisson
process, as in MLPerf's Server scenario and ``vllm bench serve``; the first request arrives at 0. Drawn
from their own seeded stream, so the same seed gives the same arrivals whatever the prompts, then
rescaled so that their mean is exactly ``1 / request_rate``: a short run is measured at the rate asked,
not at one sample's (32 Poisson gaps alone would miss it by ±18 %), and the gaps keep their shape.

A trace (``load.trace``) sets each request's arrival and length itself (:mod:`llem.workload.trace`):
nothing is drawn but the natural lengths of its lines that give none.

Natural output lengths (``output_len=null``): a request keeps the length of the dataset's reference
completion (or the trace's output_tokens) where there is one; every other request draws one from
``dataset.output_lengths`` (seeded). Either way EOS is ignored, so random weights still give the mix asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from llem.results.row import OutputLengths
from llem.workload.records import Request


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> Optional[List[float]]:
    """Arrival times (s after the first) of ``n`` requests; None for rate ``inf`` (all at once)."""
    if rate == math.inf or n == 0:
        return None
    import numpy as np

    gaps = np.random.default_rng([seed, 2]).gamma(burstiness, 1.0 / (rate * burstiness), size=max(n - 1, 0))
    if gaps.size and gaps.mean() > 0:
        gaps *= 1.0 / (rate * gaps.mean())  # the rate asked, not one sample's: same shape, mean gap exactly 1/rate
    return [0.0] + np.cumsum(gaps).tolist()


def drawn_lengths(n: int, lengths, seed: int) -> List[int]:
    """``n`` output lengths from ``dataset.output_lengths`` (its own seeded stream), clipped to [min, max]."""
    import numpy as np

    rng = np.random.default_rng([seed, 3])
    if lengths.distribution == "uniform":
        lo, hi = lengths.mean * (1 - lengths.spread), lengths.mean * (1 + lengths.spread)
        values = rng.uniform(lo, hi, size=n)
    else:  # lognormal with the asked mean: exp(mu + sigma^2 / 2) = mean
        sigma = lengths.spread
        values = rng.lognormal(math.log(lengths.mean) - sigma**2 / 2, sigma, size=n)
    return [int(v) for v in np.clip(np.rint(values), lengths.min, lengths.max)]


@dataclass
class Shaped:
    """What shaping did: the output-length source, for the row."""

    source: str  # fixed | reference | distribution | reference+distribution | trace | trace+distribution


def shape(requests: List[Request], config) -> Shaped:
    """Set each request's output length (natural lengths) and arrival time, in place (a trace's requests keep
    the arrival times they came with; a conversation's later turns get none: each is due after the one before)."""
    natural = config.output_len is None
    source = "fixed"
    if natural:
        missing = [r for r in requests if r.output_len is None]
        for r, n in zip(missing, drawn_lengths(len(missing), config.dataset.output_lengths, config.seed)):
            r.output_len = n
        given = "trace" if config.load.trace is not None else "reference"
        source = ("distribution" if len(missing) == len(requests) else
                  given if not missing else f"{given}+distribution")
    if config.load.trace is not None:
        return Shaped(source)
    starters = [r for r in requests if r.after is None]  # a conversation's later turns follow its earlier ones
    offsets = arrival_offsets(len(starters), config.load.request_rate, config.load.burstiness, config.seed)
    for r, t in zip(starters, offsets or [None] * len(starters)):
        r.arrival_s = t
    return Shaped(source)


def lengths_part(requests: List[Request], config, shaped: Shaped) -> OutputLengths:
    """The row's output-length columns: where the lengths came from and their distribution."""
    import numpy as np

    asked = np.array([r.output_len if r.output_len is not None else config.output_len for r in requests], dtype=float)
    d = config.dataset.output_lengths
    return OutputLengths(
        output_len_source=shaped.source,
        output_len_distribution=None if shaped.source in ("fixed", "reference") else
        f"{d.distribution}(mean={d.mean}, spread={d.spread:g}, min={d.min}, max={d.max})",
        output_tokens_requested_total=int(asked.sum()), output_tokens_requested_mean=float(asked.mean()),
        output_tokens_requested_p50=float(np.percentile(asked, 50)),
        output_tokens_requested_p90=float(np.percentile(asked, 90)),
        output_tokens_requested_max=int(asked.max()))
