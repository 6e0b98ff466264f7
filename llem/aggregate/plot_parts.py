"""Drawing pieces every llem figure shares: pyplot on a file-only backend, series with CI bars, doubt-flagged
configurations drawn hollow (or dashed) with a legend entry saying so, and saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llem.aggregate.doubt import is_flagged
from llem.support.install import install_hint

FLAGGED_HOLLOW = "hollow: doubt-flagged (see flags)"
FLAGGED_DASHED = "dashed: doubt-flagged (! flags)"


def plt():
    """pyplot on the file-only Agg backend; a missing matplotlib says which extra installs it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"llem's plots need matplotlib: {install_hint('plots')}") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_ticks(ax, axis: str = "x") -> None:
    """Log axes with plain numbers (1, 2, 5, 10…) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def errorbars(rows, metric: str):
    mean = rows[f"{metric}_mean"].to_numpy(float)
    lo = rows[f"{metric}_ci95_low"].to_numpy(float)
    hi = rows[f"{metric}_ci95_high"].to_numpy(float)
    return mean, np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])


def flagged(rows) -> np.ndarray:
    """Which rows (configurations) are doubt-flagged."""
    return np.array([is_flagged(r) for _, r in rows.iterrows()], dtype=bool)


def points(ax, x, y, xerr, yerr, flagged: np.ndarray, label: str) -> None:
    """One series: a line with CI bars, filled markers where unflagged, hollow where doubt-flagged."""
    bars = ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=4, label=label)
    colour = bars.lines[0].get_color()
    x, y = np.asarray(x, float), np.asarray(y, float)
    ax.plot(x[~flagged], y[~flagged], "o", color=colour, ms=7)
    ax.plot(x[flagged], y[flagged], "o", mfc="white", mec=colour, mew=1.8, ms=9)


def legend(ax, any_flagged: bool, dashed: bool = False) -> None:
    """The series legend, with an entry for how doubt-flagged configurations are drawn (hollow markers,
    or dashed lines) when there are any."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if any_flagged and dashed:
        handles.append(Line2D([], [], ls="--", color="#444444"))
        labels.append(FLAGGED_DASHED)
    elif any_flagged:
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="#444444", mew=1.8, ms=9))
        labels.append(FLAGGED_HOLLOW)
    ax.legend(handles, labels, fontsize=8)


def no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#666666")


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt().close(fig)
    return path
