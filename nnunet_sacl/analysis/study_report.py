"""The study's outputs: per_case.csv, comparison.csv (Dice) and comparison_nsd.csv, cost.csv, two plots and
report.md, which puts accuracy next to cost so that "better at equal cost" can be read off."""
import math
from pathlib import Path

import numpy as np

from nnunet_sacl.analysis.evaluation import write_csv
from nnunet_sacl.analysis.study_stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MEAN, compare_with_baseline,
                                              paired_values)
from nnunet_sacl.analysis.training_cost import COST_COLUMNS

PER_CASE_COLUMNS = ("trainer", "fold", "case", "organ", "dice", "nsd")


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _mean_table(rows: list, trainers: list, organs: list) -> list:
    lines = ["| trainer | " + " | ".join(organs) + " | mean (case mean) |", "|---" * (len(organs) + 2) + "|"]
    for t in trainers:
        cells = []
        for organ in organs:
            values = np.array([r["dice"] for r in rows if r["trainer"] == t and r["organ"] == organ], dtype=float)
            cells.append(_fmt(float(np.nanmean(values))) if np.isfinite(values).any() else "n/a")
        case_means = paired_values(rows, t, t, organs, "dice")[0]
        cells.append(_fmt(float(case_means.mean())) if case_means.size else "n/a")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _comparison_table(table: list) -> list:
    lines = ["| trainer | organ | n | mean diff | 95% CI | p (Wilcoxon) | wins / ties / losses |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['trainer']} | {r['organ']} | {r['n_pairs']} | {_fmt(r['mean_diff'])} | "
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt_p(r['p_wilcoxon'])} | "
                     f"{r['wins']} / {r['ties']} / {r['losses']} |")
    return lines


def _cost_table(costs: list, trainers: list) -> list:
    lines = ["| trainer | runs | pretraining epochs | pretraining time (s) | segmentation epochs | "
             "segmentation time (s) | iterations | total epoch time (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in trainers:
        mine = [c for c in costs if c["trainer"] == t]
        total = {k: sum(c[k] for c in mine) for k in COST_COLUMNS}
        lines.append(f"| {t} | {len(mine)} | {total['pretrain_epochs']} | {total['pretrain_seconds']:.1f} | "
                     f"{total['epochs']} | {total['epoch_seconds']:.1f} | {_fmt(total['iterations'], 0)} | "
                     f"{total['pretrain_seconds'] + total['epoch_seconds']:.1f} | {total['wall_seconds']:.1f} |")
    return lines


def box_plot(rows: list, trainers: list, organs: list, path: Path) -> None:
    """Per organ, the per-case Dice of every trainer side by side (NaN cases left out)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(6.0, (len(trainers) + 1) * 0.6 * len(organs) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    step = len(trainers) + 1
    colours = [f"C{i}" for i in range(len(trainers))]
    for k, t in enumerate(trainers):
        values = [[r["dice"] for r in rows if r["trainer"] == t and r["organ"] == o and not math.isnan(r["dice"])]
                  for o in organs]
        boxes = ax.boxplot([v or [math.nan] for v in values], positions=[i * step + k for i in range(len(organs))],
                           widths=0.8, patch_artist=True, medianprops={"color": "black"})
        for patch in boxes["boxes"]:
            patch.set_facecolor(colours[k])
        boxes["boxes"][0].set_label(t)
    ax.set_xticks([i * step + (len(trainers) - 1) / 2 for i in range(len(organs))], organs, rotation=30, ha="right")
    ax.set_ylabel("Dice per case")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=100)


def paired_plot(rows: list, trainers: list, organs: list, path: Path) -> None:
    """Per compared trainer: each case's mean Dice under the baseline (x) and the trainer (y); above the diagonal
    the trainer is better."""
    from matplotlib.figure import Figure
    others = trainers[1:]
    fig = Figure(figsize=(4.2 * len(others), 4.2), layout="constrained")
    for ax, t in zip(np.atleast_1d(fig.subplots(1, len(others))), others):
        a, b = paired_values(rows, t, trainers[0], organs, "dice")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.scatter(b, a, s=18)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{trainers[0]} (case mean Dice)")
        ax.set_ylabel(f"{t} (case mean Dice)")
    fig.savefig(path, dpi=100)


def write_report(study, rows: list, costs: list, command: str = None) -> Path:
    out, organs, trainers = Path(study.out_dir), list(study.labels), study.trainers
    out.mkdir(parents=True, exist_ok=True)
    write_csv([{k: r[k] for k in PER_CASE_COLUMNS} for r in rows], out / "per_case.csv")
    dice_table = compare_with_baseline(rows, trainers, organs, "dice")
    nsd_table = compare_with_baseline(rows, trainers, organs, "nsd")
    write_csv(dice_table, out / "comparison.csv")
    write_csv(nsd_table, out / "comparison_nsd.csv")
    write_csv([{"trainer": c["trainer"], "fold": c["fold"], **{k: c[k] for k in COST_COLUMNS}} for c in costs],
              out / "cost.csv")
    box_plot(rows, trainers, organs, out / "dice_boxplot.png")
    paired_plot(rows, trainers, organs, out / "case_mean_pairs.png")
    source = (f"test set {study.test_images} (labels {study.test_labels}), predicted by each fold's model"
              if study.test_images else "each fold's validation cases (nnU-Net's fold_X/validation predictions)")
    lines = [f"# Study: {', '.join(trainers)} on {study.dataset}", "",
             f"- configuration `{study.configuration}`, plans `{study.plans}`, folds {' '.join(map(str, study.folds))}, "
             f"device `{study.device}`",
             f"- evaluated on {source}; NSD tolerance {study.tolerance:g} mm",
             f"- baseline: `{trainers[0]}`; differences are trainer - baseline"]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "## Mean Dice per organ", ""] + _mean_table(rows, trainers, organs)
    lines += ["", "## Paired comparison with the baseline (Dice)", ""] + _comparison_table(dice_table)
    lines += ["", "## Paired comparison with the baseline (NSD)", ""] + _comparison_table(nsd_table)
    lines += ["", "## Cost (from nnU-Net's training logs, summed over folds)", ""] + _cost_table(costs, trainers)
    lines += ["", "## How to read this", "",
              f"A pair is one case, each side averaged over the folds that evaluated it; `{MEAN}` is the per-case "
              "mean over the organs both sides define. The 95% CI is the percentile interval of the mean difference "
              f"over {BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the cases (seed {BOOTSTRAP_SEED}); p is the "
              "two-sided Wilcoxon signed-rank test (scipy, zero differences dropped). Cost: pretraining and "
              "segmentation epochs with their summed epoch times, iterations = iterations per epoch x all epochs, "
              "wall time = first to last line of every training log (start-up and validation included).", "",
              "Files: per_case.csv, comparison.csv, comparison_nsd.csv, cost.csv, dice_boxplot.png, "
              "case_mean_pairs.png."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
