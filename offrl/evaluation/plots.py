"""Report figures: interval estimates, performance profiles, P(improvement), learning curves.

Figures are built on ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot), so making a
report never changes the backend or global state of a user's session. Every figure is saved as
PNG (for reading) and SVG (for papers). Colours follow the algorithm order, the same in all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from offrl.evaluation.stats import Interval, Profile

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "--",
    "svg.fonttype": "none",        # keep text as text in SVG
}
BAND_ALPHA = 0.2


def algorithm_colors(names: Sequence[str]) -> dict[str, tuple]:
    """One distinct colour per algorithm, in order (tab10, then tab20 beyond ten)."""
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` into ``out_dir``; return both paths."""
    paths = [Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=dpi)
    fig.set_layout_engine("none")  # the layout is settled; don't solve it again for the SVG
    fig.savefig(paths[1])
    return paths


def _steps_formatter() -> ticker.FuncFormatter:
    def fmt(x, _pos):
        if abs(x) >= 1e6:
            return f"{x / 1e6:g}M"
        if abs(x) >= 1e3:
            return f"{x / 1e3:g}k"
        return f"{x:g}"
    return ticker.FuncFormatter(fmt)


def plot_interval_estimates(
    intervals: Mapping[str, Mapping[str, Interval]],
    metrics: Sequence[str],
    colors: Mapping[str, tuple],
    xlabel: str = "Normalized score",
) -> Figure:
    """One panel per metric; a bar per algorithm spans its interval, a tick marks the estimate."""
    names = list(intervals)
    with matplotlib.rc_context(STYLE):
        height = 1.2 + 0.42 * len(names)
        fig = Figure(figsize=(2.9 * len(metrics) + 1.2, height), layout="constrained")
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        y = np.arange(len(names))[::-1]   # first algorithm on top
        for ax, metric in zip(axes, metrics):
            for yi, name in zip(y, names):
                iv = intervals[name][metric]
                ax.barh(yi, iv.high - iv.low, left=iv.low, height=0.6, color=colors[name],
                        alpha=0.75)
                ax.vlines(iv.point, yi - 0.3, yi + 0.3, color="black", linewidth=2)
            ax.set_title(metric + (" (lower is better)" if metric == "Optimality Gap" else ""))
            ax.set_xlabel(xlabel)
            ax.grid(axis="y", visible=False)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        axes[0].set_yticks(y, names)
        axes[0].set_ylim(-0.6, len(names) - 0.4)
    return fig


def plot_performance_profiles(
    profiles: Mapping[str, Mapping[str, Profile]],
    colors: Mapping[str, tuple],
    xlabel: str = "Normalized score (τ)",
) -> Figure:
    """Panels of profiles (e.g. {"Run-score distribution": ..., "Average-score ...": ...}).

    Each curve is the fraction above τ with its pointwise confidence band.
    """
    titles = list(profiles)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.2 * len(titles), 4.2), layout="constrained")
        axes = fig.subplots(1, len(titles), squeeze=False)[0]
        for ax, title in zip(axes, titles):
            for name, prof in profiles[title].items():
                ax.plot(prof.taus, prof.point, color=colors[name], linewidth=2, label=name)
                ax.fill_between(prof.taus, prof.low, prof.high, color=colors[name],
                                alpha=BAND_ALPHA, linewidth=0)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("Fraction of " + ("runs" if "Run" in title else "datasets")
                          + " with score > τ")
            ax.set_ylim(-0.02, 1.02)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=min(len(labels), 5), frameon=False)
    return fig


def plot_probability_of_improvement(
    poi: Mapping[tuple[str, str], Interval],
    colors: Mapping[str, tuple],
    confidence: float = 0.95,
    max_rows: int = 10,
) -> Figure:
    """P(X > Y) with intervals: one row per pair, or a matrix when there are many pairs."""
    if len(poi) > max_rows:
        return _probability_of_improvement_matrix(poi, confidence)
    pairs = list(poi)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.0, 1.3 + 0.42 * len(pairs)), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(pairs))[::-1]
        for yi, (x_name, y_name) in zip(y, pairs):
            iv = poi[(x_name, y_name)]
            ax.barh(yi, iv.high - iv.low, left=iv.low, height=0.6, color=colors[x_name],
                    alpha=0.75)
            ax.vlines(iv.point, yi - 0.3, yi + 0.3, color="black", linewidth=2)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.6, len(pairs) - 0.4)
        ax.set_yticks(y, [x for x, _ in pairs])
        ax.grid(axis="y", visible=False)
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        right.set_yticks(y, [f"vs  {y_name}" for _, y_name in pairs])
        right.grid(False)
        right.spines["right"].set_visible(False)
        right.tick_params(axis="y", length=0)
        ax.set_xlabel("P(X > Y): probability that a run of X beats a run of Y")
        ax.set_title("Probability of improvement (X left, Y right)")
    return fig


def _probability_of_improvement_matrix(poi: Mapping[tuple[str, str], Interval],
                                       confidence: float) -> Figure:
    """Cell (row X, column Y) holds P(X > Y); bold where its interval excludes ½."""
    names = list(dict.fromkeys(n for pair in poi for n in pair))
    index = {n: i for i, n in enumerate(names)}
    point = np.full((len(names), len(names)), np.nan)
    clear = np.zeros_like(point, dtype=bool)
    for (x, y), iv in poi.items():
        # P(Y > X) = 1 - P(X > Y), and its interval is the mirror image.
        for a, b, value, low, high in ((x, y, iv.point, iv.low, iv.high),
                                       (y, x, 1 - iv.point, 1 - iv.high, 1 - iv.low)):
            point[index[a], index[b]] = value
            clear[index[a], index[b]] = low > 0.5 or high < 0.5
    size = 0.62 * len(names) + 2.4
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(size + 1.2, size), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(point, cmap="RdBu", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                if not np.isfinite(point[i, j]):
                    continue
                if clear[i, j]:
                    style = {"fontweight": "bold",
                             "color": "white" if abs(point[i, j] - 0.5) > 0.3 else "black"}
                else:  # no clear difference: quieter text (these cells are near white)
                    style = {"color": "dimgray"}
                ax.text(j, i, f"{point[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        **style)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        ax.set_xlabel("Y")
        ax.set_ylabel("X")
        ax.set_title(f"P(X > Y), row X vs column Y; bold: {100 * confidence:g}% interval "
                     "excludes 0.5")
        fig.colorbar(image, ax=ax, shrink=0.8, label="P(X > Y)")
    return fig


CurvePanel = tuple[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]


def plot_curves(
    panels: Sequence[CurvePanel],
    colors: Mapping[str, tuple],
    ylabel: str,
    xlabel: str = "Gradient steps",
    ncols: int = 3,
    suptitle: str | None = None,
) -> Figure:
    """Small multiples: each panel ``(title, {algorithm: (steps, mean, low, high)})``."""
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    names = list(dict.fromkeys(n for _, curves in panels for n in curves))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(5.5, 4.3 * ncols), 3.1 * nrows + 0.6), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (title, curves) in zip(axes, panels):
            for name, (steps, mean, low, high) in curves.items():
                ax.plot(steps, mean, color=colors[name], linewidth=1.8, label=name)
                ax.fill_between(steps, low, high, color=colors[name], alpha=BAND_ALPHA,
                                linewidth=0)
                if len(steps) == 1:  # a single evaluation: show it as a point
                    ax.plot(steps, mean, "o", color=colors[name])
            ax.set_title(title)
            ax.xaxis.set_major_formatter(_steps_formatter())
            ax.xaxis.set_major_locator(ticker.MaxNLocator(5))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for i, ax in enumerate(axes[:len(panels)]):
            if i % ncols == 0:
                ax.set_ylabel(ylabel)
            if i + ncols >= len(panels):   # nothing drawn below this panel
                ax.set_xlabel(xlabel)
        handles = [matplotlib.lines.Line2D([], [], color=colors[n], linewidth=2) for n in names]
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6),
                   frameon=False)
        if suptitle:
            fig.suptitle(suptitle, fontsize=STYLE["axes.titlesize"] + 1)
    return fig
