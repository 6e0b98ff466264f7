"""PNG figures from an aggregate: J/token and throughput vs batch with CI bars, the throughput vs
J/token trade-off, latency distributions from the raw request rows, and one job's power time
series with its phases shaded. Doubt-flagged configurations are drawn hollow (dashed in the
latency plot), with a legend entry saying so. matplotlib is imported here only
(``pip install ".[plots]"`` from a clone of llem)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional

import numpy as np

from llem.aggregate import load_plots
from llem.aggregate import plot_parts as parts
from llem.aggregate.doubt import MARK, codes_of, flag_text, is_flagged
from llem.aggregate.stats import varying_columns

log = logging.getLogger(__name__)

PHASE_COLOURS = {"device_idle": "#d9d9d9", "settle": "#f0f0f0", "setup": "#fde0c5", "load": "#f8c291",
                 "warmup": "#f6e58d", "loaded_idle": "#c7ecee", "measure": "#badc58"}
MAX_SERIES = 12


def _series(summary) -> List[tuple]:
    """(label, rows sorted by batch) per engine/model/other varying setting."""
    keys = [c for c in ["cfg.backend.name", "cfg.model.name", *varying_columns(summary)]
            if c in summary.columns and c != "cfg.batch"]
    keys = list(dict.fromkeys(keys))
    out = []
    for values, rows in summary.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        parts = [str(v) if k in ("cfg.backend.name", "cfg.model.name") else f"{k.removeprefix('cfg.')}={v}"
                 for k, v in zip(keys, values)]
        out.append((" ".join(parts), rows.sort_values("cfg.batch")))
    return out[:MAX_SERIES]


def per_batch(summary, path: Path) -> Path:
    return parts.save(per_batch_figure(summary), path)


def per_batch_figure(summary):
    """J/token and tok/s against batch, one line per series; doubt-flagged configurations hollow."""
    plt = parts.plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, metric, title in ((axes[0], "j_per_output_token", "energy per output token (adjusted), J"),
                              (axes[1], "output_tok_per_s", "output tokens per second")):
        drawn = any_flagged = False
        for label, rows in _series(summary):
            if f"{metric}_mean" not in rows or rows[f"{metric}_mean"].isna().all():
                continue
            mean, err = parts.errorbars(rows, metric)
            flagged = parts.flagged(rows)
            parts.points(ax, rows["cfg.batch"], mean, None, err, flagged, label)
            drawn, any_flagged = True, any_flagged or bool(flagged.any())
        ax.set_xscale("log", base=2)
        batches = sorted(summary["cfg.batch"].dropna().unique())
        ax.set_xticks(batches)
        ax.set_xticklabels([f"{b:g}" for b in batches])
        ax.set_xlabel("batch (sequences in flight)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            parts.legend(ax, any_flagged)
        else:
            parts.no_data(ax, "not measured\n(no NVML GPU)" if metric.startswith("j_") else "no data")
    fig.suptitle("mean across repeats, bars: bootstrap 95% CI")
    fig.tight_layout()
    return fig


def tradeoff(summary, path: Path) -> Path:
    return parts.save(tradeoff_figure(summary), path)


def tradeoff_figure(summary):
    """Throughput against J/token per configuration (labels: batch); doubt-flagged configurations hollow."""
    plt = parts.plt()
    fig, ax = plt.subplots(figsize=(8, 6))
    drawn = any_flagged = False
    for label, rows in _series(summary):
        if "j_per_output_token_mean" not in rows or rows["j_per_output_token_mean"].isna().all():
            continue
        y, yerr = parts.errorbars(rows, "j_per_output_token")
        x, xerr = parts.errorbars(rows, "output_tok_per_s")
        flagged = parts.flagged(rows)
        parts.points(ax, x, y, xerr, yerr, flagged, label)
        for xi, yi, b, doubtful in zip(x, y, rows["cfg.batch"], flagged):
            ax.annotate(f"b{_batch(b)}{MARK if doubtful else ''}", (xi, yi), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        drawn, any_flagged = True, any_flagged or bool(flagged.any())
    ax.set_xlabel("output tokens per second (higher is better)")
    ax.set_ylabel("J per output token, adjusted (lower is better)")
    ax.set_title("throughput vs energy per token (labels: batch)")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        parts.plain_ticks(ax, "x")
        parts.plain_ticks(ax, "y")
        parts.legend(ax, any_flagged)
    else:
        parts.no_data(ax, "energy not measured (no NVML GPU)")
    fig.tight_layout()
    return fig


def _batch(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def latency(agg, path: Path, max_points: int = 20000) -> Path:
    """ECDFs of TTFT and of every inter-token gap, per configuration, from the raw request rows."""
    plt = parts.plt()
    ok = agg.runs[agg.runs["status"] == "ok"]
    config_of = dict(zip(ok["job_key"], ok["config_key"]))
    labels = {r["config_key"]: " ".join(f"{c.removeprefix('cfg.')}={r[c]}" for c in
                                        dict.fromkeys(["cfg.batch", *varying_columns(agg.summary)]))
              for _, r in agg.summary.iterrows()}
    flagged = {r["config_key"]: flag_text(r) for _, r in agg.summary.iterrows() if is_flagged(r)}
    labels.update({k: f"{labels[k]} {MARK} {text}" for k, text in flagged.items()})
    req = agg.requests.select([c for c in ("job_key", "ttft_ms", "itl_ms") if c in agg.requests.column_names])
    frame = req.to_pandas()
    frame["config_key"] = frame["job_key"].map(config_of)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for key, rows in list(frame.dropna(subset=["config_key"]).groupby("config_key", sort=False))[:MAX_SERIES]:
        for ax, values in ((axes[0], rows["ttft_ms"].dropna().to_numpy(float)),
                           (axes[1], np.concatenate([np.asarray(v, float) for v in rows.get("itl_ms", [])
                                                     if v is not None] or [np.array([])]))):
            if values.size == 0:
                continue
            if values.size > max_points:
                values = rng.choice(values, max_points, replace=False)
            values = np.sort(values)
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=labels.get(key, key),
                    ls="--" if key in flagged else "-")
    for ax, name in ((axes[0], "time to first token, ms"), (axes[1], "inter-token latency, ms (every gap)")):
        ax.set_xscale("log")
        parts.plain_ticks(ax, "x")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests" if "first" in name else "fraction of gaps")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            parts.legend(ax, any(line.get_linestyle() == "--" for line in ax.lines), dashed=True)
        else:
            parts.no_data(ax, "no request timings")
    fig.suptitle("latency distributions (empirical CDF over all request rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pick_job(runs, job: Optional[str]):
    """The job named by id, key or dir; by default the successful one with the most GPU energy."""
    if job:
        hit = runs[(runs["job_id"] == job) | (runs["job_key"] == job) | (runs["job_dir"] == str(Path(job).resolve()))]
        if hit.empty:
            raise ValueError(f"--job {job!r}: no such job (give a job_id, job_key or job dir from runs.parquet)")
        return hit.iloc[0]
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    if "gpu_energy_j" in ok and ok["gpu_energy_j"].notna().any():
        return ok.loc[ok["gpu_energy_j"].idxmax()]
    return ok.iloc[0]


def power_timeseries(row, path: Path) -> Path:
    """One job's sampled power (per GPU) over time, its phases shaded; CPU use where there is no GPU."""
    import pandas as pd

    plt = parts.plt()
    ts = pd.read_parquet(Path(row["job_dir"]) / "timeseries.parquet")
    fig, ax = plt.subplots(figsize=(13, 5))
    gpu = ts.dropna(subset=["power_instant_w"]) if "power_instant_w" in ts else ts.iloc[0:0]
    if not gpu.empty:
        for index, rows in gpu.groupby("gpu_index"):
            ax.plot(rows["t_s"], rows["power_instant_w"], lw=1.2, label=f"GPU {int(index)} instant power")
        ax.set_ylabel("power, W")
    else:
        ax.plot(ts["t_s"], ts["cpu_util_pct"], lw=1.2, color="#555555", label="host CPU utilisation")
        ax.set_ylabel("host CPU utilisation, % (no GPU power: not measured)")
    order = ts.sort_values("t_s")
    runs_of_phase = (order["phase"] != order["phase"].shift()).cumsum()
    seen = set()
    for _, seg in order.groupby(runs_of_phase):
        phase = seg["phase"].iloc[0]
        ax.axvspan(seg["t_s"].min(), seg["t_s"].max(), color=PHASE_COLOURS.get(phase, "#eeeeee"), alpha=0.6,
                   label=phase if phase not in seen else None, lw=0)
        seen.add(phase)
    ax.set_xlabel("seconds from the start of the measured window")
    ax.set_title(power_title(row), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def power_title(row) -> str:
    """The job, its window and energy, and its doubt flags on a second line when it raised any."""
    energy = row.get("gpu_energy_j")
    title = f"{row['job_id']}"
    if energy == energy and energy is not None:
        title += f" — window {row['window_s']:.2f} s, {energy:.0f} J raw, {row.get('j_per_output_token'):.4g} J/token"
    codes = codes_of(row.get("flags"))
    if codes:
        title += f"\n{MARK} doubt-flagged: {', '.join(codes)} (warnings in runs.parquet)"
    return title


def draw_all(agg, out_dir: Path, job: Optional[str] = None) -> List[Path]:
    """Every figure into ``out_dir`` (created): per batch, trade-off, latency, and one job's power."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [per_batch(agg.summary, out_dir / "j_per_token_vs_batch.png"),
             tradeoff(agg.summary, out_dir / "throughput_vs_j_per_token.png"),
             latency(agg, out_dir / "latency_distributions.png")]

    if load_plots.has_rates(agg.summary):
        paths.append(load_plots.load_curves(agg.summary, out_dir / "load_j_per_token_and_latency_vs_rate.png"))
    row = pick_job(agg.runs, job)
    if row is not None and (Path(row["job_dir"]) / "timeseries.parquet").is_file():
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(row["job_id"]))[:80]
        paths.append(power_timeseries(row, out_dir / f"power_{name}.png"))
    return paths
