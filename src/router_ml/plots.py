"""Cost-quality and PGR plots of routers against their baselines, saved as PNG.

matplotlib is imported inside the functions, so importing router_ml stays light. Figures
are drawn on the Agg canvas directly, without pyplot: nothing is left open afterwards and
an interactive backend (a notebook's) is never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router_ml.evaluate import hull

DPI = 110


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5.5))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _draw_hull(axes, costs, qualities, label: str, **style) -> None:
    hull_costs, hull_qualities = hull(costs, qualities)
    axes.plot(hull_costs, hull_qualities, label=label, **style)


def plot_cost_quality(path, curves: dict, singles: dict, title: str, oracle=None) -> Path:
    """Average quality against average cost per call.

    ``curves`` maps a router's name to its operating points (costs, qualities): its hull is drawn
    as a line over the raw points, drawn faint. ``singles`` maps a model's name to its (cost,
    quality), drawn as labelled dots; from them come the zero router (their hull, dashed) and the
    random router (cheapest to best-quality model, dotted). ``oracle``, optional (costs, qualities),
    is drawn as a hull too. The cost axis is logarithmic when costs span more than two orders of
    magnitude.
    """
    figure, axes = _figure()
    single_costs = np.array([cost for cost, _ in singles.values()], dtype=float)
    single_qualities = np.array([quality for _, quality in singles.values()], dtype=float)
    for name, (costs, qualities) in curves.items():
        line = axes.plot(costs, qualities, "o", markersize=2, alpha=0.2)[0]
        _draw_hull(axes, costs, qualities, name, color=line.get_color(), linewidth=2)
    if oracle is not None:
        _draw_hull(axes, *oracle, "oracle", color="black", linewidth=1.5)
    if len(singles):
        _draw_hull(axes, single_costs, single_qualities, "zero router", color="grey", linestyle="--")
        cheapest = np.lexsort((-single_qualities, single_costs))[0]
        best = np.lexsort((single_costs, -single_qualities))[0]
        axes.plot(single_costs[[cheapest, best]], single_qualities[[cheapest, best]],
                  color="grey", linestyle=":", label="random router")
        axes.scatter(single_costs, single_qualities, color="dimgrey", s=18, zorder=3)
        for name, cost, quality in zip(singles, single_costs, single_qualities):
            axes.annotate(name, (cost, quality), textcoords="offset points", xytext=(4, 3), fontsize=7)
    every_cost = np.concatenate([single_costs, *(np.asarray(c, float) for c, _ in curves.values())])
    positive = every_cost[every_cost > 0]
    if len(positive) and positive.max() > 100 * positive.min():
        axes.set_xscale("log")
    axes.set_xlabel("average cost per call (USD)")
    axes.set_ylabel("average quality")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_pgr(path, curves: dict, title: str) -> Path:
    """PGR against the share of calls sent to the strong model; ``curves`` maps a router's name to
    (fractions, pgr). The diagonal is the random router."""
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="random router")
    for name, (fractions, pgr) in curves.items():
        axes.plot(fractions, pgr, label=name, linewidth=2)
    axes.set_xlabel("share of calls to the strong model")
    axes.set_ylabel("performance gap recovered (PGR)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_operating_point(path, reports: list[dict]) -> Path:
    """The online operating point over each stream's calls (its first replays), as the share of traffic its
    level sends away from the reference; the realized quality share and net cost cut of each in its legend."""
    figure, axes = _figure()
    for report in reports:
        away = np.array([0.0, *report["away_shares"], 1.0])
        median = report["median"]
        label = f"{report['stream']}: kept {median['quality_share']:.1%}, net cut {median['net_cost_cut']:.1%}"
        if report.get("cost_target") is not None:
            label += f", spent {median['spend_of_cost_target']:.0%} of the cost target {report['cost_target']:.0%}"
        color = None
        for k, trace in enumerate(report["level_trace"]):
            line = axes.plot(np.arange(len(trace)), np.interp(trace, np.arange(len(away)), away),
                             drawstyle="steps-post", alpha=0.9 if k == 0 else 0.35, color=color,
                             label=label if k == 0 else None)
            color = line[0].get_color()
    axes.set_xlabel("call")
    axes.set_ylabel("share of traffic the operating point routes away from the reference")
    axes.set_title("Online operating point per stream (first replays)")
    axes.legend(fontsize=6, loc="upper left")
    axes.grid(alpha=0.3)
    return _save(figure, path)
