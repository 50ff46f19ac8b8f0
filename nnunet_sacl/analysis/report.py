"""The report path of analysis/, one for ``nnunet-sacl compare`` and for a study: CSV files, numbers as the Markdown
tables print them (no p or CI from fewer pairs than ``stats.MIN_PAIRS``), and the per-organ plot of each method's
per-case values."""
import csv
import math
from pathlib import Path

from nnunet_sacl.analysis.stats import scored, testable


def write_csv(rows: list, path) -> Path:
    """``rows`` (dicts with the same keys, in column order) as a CSV file with a header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fmt(value, digits: int = 4) -> str:
    """A number as the tables print it; 'n/a' for none or NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value as the tables print it: four decimals, '<0.0001' below, 'n/a' for NaN."""
    return "n/a" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def fmt_test(p: float, n) -> str:
    """The p cell of a paired comparison of ``n`` pairs: ``fmt_p``, or "n = K: no test" under ``stats.MIN_PAIRS``."""
    return fmt_p(p) if testable(int(n)) else f"n = {int(n)}: no test"


def fmt_ci(low: float, high: float, n) -> str:
    """The 95% CI cell of ``n`` pairs: "[low, high]", or "no CI" under ``stats.MIN_PAIRS``."""
    return f"[{fmt(low)}, {fmt(high)}]" if testable(int(n)) else "no CI"


# a group with fewer values than this is drawn as its values, not as a box (a box of one value is a flat line)
FEWEST_FOR_A_BOX = 5


def _scored_values(rows_by_method: dict, organs: list, metric: str) -> dict:
    """name -> per organ, the scored values of its cases (``stats.scored``; organs absent from a reference left
    out)."""
    return {name: [[v for v in (scored(r, metric) for r in rows if r["organ"] == o) if not math.isnan(v)]
                   for o in organs] for name, rows in rows_by_method.items()}


def drawing(rows_by_method: dict, organs: list, metric: str) -> str:
    """How ``box_figure`` draws the values: "boxes" where some organ has ``FEWEST_FOR_A_BOX`` values or more under
    a method, "bars" with at most one value each (one case), else "dots"."""
    most = max((len(v) for groups in _scored_values(rows_by_method, organs, metric).values() for v in groups),
               default=0)
    return "boxes" if most >= FEWEST_FOR_A_BOX else "bars" if most <= 1 else "dots"


def box_figure(rows_by_method: dict, organs: list, panels: list, colours: tuple = None):
    """One panel per ``(metric, y label)`` of ``panels``; in each, per organ, every method's per-case values side by
    side (``rows_by_method``: name -> rows with ``organ``, the metric and ``reference_voxels``; only cases whose
    reference holds the organ, ``stats.scored``). A box where every group has ``FEWEST_FOR_A_BOX`` values or more;
    otherwise each value as a dot, and with one case per group a bar per organ and method, so that a one-case report
    shows its per-organ values instead of flat boxes. ``colours``: one per method (default matplotlib's C0, C1, ...)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with agg

    names, step = list(rows_by_method), len(rows_by_method) + 1
    colours = colours or [f"C{i}" for i in range(len(names))]
    fig = Figure(figsize=(max(6.0, step * 0.6 * len(organs) + 2), 1.5 + 3.0 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (metric, label) in zip(axes, panels):
        values = _scored_values(rows_by_method, organs, metric)
        kind = drawing(rows_by_method, organs, metric)
        for k, name in enumerate(names):
            positions = [i * step + k for i in range(len(organs))]
            if kind == "boxes":
                boxes = ax.boxplot([v or [math.nan] for v in values[name]], positions=positions, widths=0.8,
                                   patch_artist=True, medianprops={"color": "black"})
                for patch in boxes["boxes"]:
                    patch.set_facecolor(colours[k])
                boxes["boxes"][0].set_label(name)
            elif kind == "bars":
                ax.bar(positions, [v[0] if v else math.nan for v in values[name]], width=0.8, color=colours[k],
                       label=name)
            else:
                x = [p for p, v in zip(positions, values[name]) for _ in v]
                ax.scatter(x, [y for v in values[name] for y in v], color=colours[k], s=20, label=name)
        for i in range(len(organs)):
            if not any(values[n][i] for n in names):    # in no case's reference
                ax.text(i * step + (len(names) - 1) / 2, 0.02, "absent", ha="center", fontsize="x-small",
                        rotation=90, color="grey")
        ax.set_xticks([i * step + (len(names) - 1) / 2 for i in range(len(organs))], organs, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower left", fontsize="small")
    return fig


def box_plot(rows_by_method: dict, organs: list, panels: list, path, colours: tuple = None) -> Path:
    """``box_figure`` written to ``path`` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    box_figure(rows_by_method, organs, panels, colours).savefig(path, dpi=100)
    return path
