"""The pre-registered study's two primary endpoints, per arm and K, as markdown tables (docs/studies/prereg/README.md, "Results"),
and the plot of both against K (``PREREG_DIR/endpoints_vs_train_cases.png``).

    python docs/studies/prereg/report.py PREREG_DIR TEST_LABELS_DIR DATASET_JSON

PREREG_DIR is the folder `run.sh` wrote (`WORKDIR/prereg`). It reads only the study's own
outputs: the validation comparison (`all_val/Kall`, `k_val/K1`, `k_val/K2`: comparison.csv, organ `mean`, and
budget.csv), the held-out scan's per-case Dice (`all_test/Kall`, `k_test/K1`, `k_test/K2`: per_case.csv) and the
costs (cost.csv). The held-out endpoint is the mean Dice over the organs present in the held-out label (read from
the label file), one value per fold's model, and its mean over the folds.
"""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BASELINE = "nnUNetTrainer_prereg"


def rows(path: Path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


def organs_present(labels_dir: Path, dataset_json: Path) -> list:
    names = {int(v): k for k, v in json.loads(dataset_json.read_text())["labels"].items()
             if isinstance(v, int) and int(v) > 0}
    present = set()
    for file in sorted(labels_dir.glob("*.nii.gz")):
        present |= set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(file)))).tolist())
    return [names[i] for i in sorted(present) if i in names]


def heldout(per_case: list, organs: list) -> dict:
    """{trainer: {fold: mean Dice over `organs`}} from a test-set study's per_case.csv (one held-out case)."""
    out = {}
    for r in per_case:
        if r["organ"] in organs:
            out.setdefault(r["trainer"], {}).setdefault(int(r["fold"]), []).append(float(r["dice"]))
    for trainer, folds in out.items():
        for fold, values in folds.items():
            if len(values) != len(organs) or any(math.isnan(v) for v in values):
                raise SystemExit(f"{trainer} fold {fold}: {len(values)} defined organ values, expected {len(organs)}")
            folds[fold] = float(np.mean(values))
    return out


def fmt(x, d=3, sign=False):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:+.{d}f}" if sign else f"{x:.{d}f}")


def fmt_p(p):
    p = float(p)
    return "n/a" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def plot_vs_k(points: dict, out_png: Path, all_cases: int = 16, order=("1", "2", "all")) -> None:
    """points: {arm: {k: (val diff, ci low, ci high, held-out diff, [held-out diff per fold])}}; K = all at
    ``all_cases`` training cases. Two panels: validation case mean and held-out scan, difference to the baseline."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    order = list(order)                             # evenly spaced, e.g. K = 1, 2 and all (16 per fold)
    xs = lambda ks: [order.index(k) for k in ks]
    for i, (arm, by_k) in enumerate(sorted(points.items())):
        ks = sorted(by_k, key=order.index)
        x = [v + (i - (len(points) - 1) / 2) * 0.06 for v in xs(ks)]
        val = [by_k[k][0] for k in ks]
        err = [[by_k[k][0] - by_k[k][1] for k in ks], [by_k[k][2] - by_k[k][0] for k in ks]]
        left.errorbar(x, val, yerr=err, marker="o", capsize=4, label=arm)
        right.plot(x, [by_k[k][3] for k in ks], marker="o", label=arm)
        for xi, k in zip(x, ks):
            right.scatter([xi] * len(by_k[k][4]), by_k[k][4], s=12, alpha=0.5, color=right.lines[-1].get_color())
    for ax, title in ((left, "validation crops: case-mean Dice difference (95% CI)"),
                      (right, "held-out scan: mean Dice difference (line: mean of folds; dots: folds)")):
        ax.axhline(0, color="k", lw=1)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"all ({all_cases})" if k == "all" else k for k in order])
        ax.set_xlabel("labelled training cases per fold (K)")
        ax.set_title(title, fontsize=10)
    left.set_ylabel("arm - baseline")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def prereg_regimes(prereg: Path) -> list:
    """(K, validation study folder, test study folder) of the pre-registered study's calls."""
    return [("all", prereg / "all_val" / "Kall", prereg / "all_test" / "Kall")] + \
           [(k, prereg / "k_val" / f"K{k}", prereg / "k_test" / f"K{k}") for k in ("1", "2")]


def main(prereg: Path, labels_dir: Path, dataset_json: Path, regimes=None, baseline: str = BASELINE) -> dict:
    """Prints the endpoint and cost tables; returns {arm: {K: (val diff, CI low, CI high, held-out diff,
    [held-out diff per fold])}}."""
    organs = organs_present(labels_dir, dataset_json)
    points = {}
    regimes = regimes or prereg_regimes(prereg)
    print(f"Held-out organs ({len(organs)}): {', '.join(organs)}\n")
    print("| K | arm | budget | n | mean diff (val, case mean) | 95% CI | p | wins / ties / losses | "
          "held-out mean, folds 0 / 1 / 2 | held-out mean over folds | diff | folds above baseline | pays off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k, val, test in regimes:
        if not (val / "comparison.csv").is_file():
            print(f"| {k} | (not run) |" + " |" * 11)
            continue
        budget = {r["trainer"]: r["budget"] for r in rows(val / "budget.csv")}
        held = heldout(rows(test / "per_case.csv"), organs) if (test / "per_case.csv").is_file() else {}
        base = held.get(baseline, {})
        base_mean = float(np.mean(list(base.values()))) if base else math.nan
        print(f"| {k} | {baseline} (baseline) | - | | | | | | "
              + " / ".join(fmt(base.get(f)) for f in sorted(base)) + f" | {fmt(base_mean)} | | | |")
        for r in rows(val / "comparison.csv"):
            if r["organ"] != "mean":
                continue
            t = r["trainer"]
            mine = held.get(t, {})
            mean = float(np.mean(list(mine.values()))) if mine else math.nan
            above = sum(mine[f] > base[f] for f in mine if f in base)
            pays = float(r["ci_low"]) > 0 and above >= 2
            points.setdefault(t, {})[k] = (float(r["mean_diff"]), float(r["ci_low"]), float(r["ci_high"]),
                                           mean - base_mean, [mine[f] - base[f] for f in sorted(mine) if f in base])
            print(f"| {k} | {t} | {budget.get(t, '')} | {r['n_pairs']} | {fmt(float(r['mean_diff']), sign=True)} | "
                  f"[{fmt(float(r['ci_low']), sign=True)}, {fmt(float(r['ci_high']), sign=True)}] | "
                  f"{fmt_p(r['p_wilcoxon'])} | {r['wins']} / {r['ties']} / {r['losses']} | "
                  + " / ".join(fmt(mine.get(f)) for f in sorted(mine))
                  + f" | {fmt(mean)} | {fmt(mean - base_mean, sign=True)} | {above} of {len(mine)} | "
                  f"{'yes' if pays else 'no'} |")
    plot_vs_k({t: v for t, v in points.items() if len(v) > 1} or points, prereg / "endpoints_vs_train_cases.png",
              order=[k for k, _, _ in sorted(regimes, key=lambda r: (r[0] == "all", r[0].zfill(4)))])
    print("\nCost per run (mean over the 3 folds, from the training logs):\n")
    print("| K | arm | pretraining iterations | segmentation iterations | pretraining s | segmentation epochs s | "
          "wall s | fastest fold's wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for k, val, _ in regimes:
        if not (val / "cost.csv").is_file():
            continue
        by = {}
        for r in rows(val / "cost.csv"):
            by.setdefault(r["trainer"], []).append(r)
        for t, rs in by.items():
            m = lambda key: float(np.mean([float(r[key]) for r in rs]))
            print(f"| {k} | {t} | {m('pretrain_epochs') * m('iterations_per_epoch'):.0f} | "
                  f"{m('epochs') * m('iterations_per_epoch'):.0f} | {m('pretrain_seconds'):.0f} | "
                  f"{m('epoch_seconds'):.0f} | {m('wall_seconds'):.0f} | "
                  f"{min(float(r['wall_seconds']) for r in rs):.0f} |")
    return points


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*(Path(a) for a in sys.argv[1:]))
