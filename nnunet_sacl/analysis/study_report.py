"""The study's outputs: per_case.csv, comparison.csv (Dice) and comparison_nsd.csv, cost.csv, two plots and
report.md, which puts accuracy next to cost so that "better at equal cost" can be read off. Statistics from
``analysis.stats``, files, numbers and the box plot through ``analysis.report``, as ``nnunet-sacl compare``'s."""
import math
from pathlib import Path

import numpy as np

from nnunet_sacl.analysis.report import FEWEST_FOR_A_BOX, box_plot, drawing, fmt, fmt_ci, fmt_test, write_csv
from nnunet_sacl.analysis.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MEAN, MIN_PAIRS, case_mean,
                                        compare_runs_with_baseline, organ_mean, paired_values)
from nnunet_sacl.analysis.training_cost import COST_COLUMNS, pseudo_dice_curve, run_cost

PER_CASE_COLUMNS = ("trainer", "fold", "seed", "case", "organ", "dice", "nsd", "reference_voxels")
ABSENT = "absent"


def _mean_table(rows: list, trainers: list, organs: list) -> list:
    """Per trainer, each organ's mean Dice over the cases whose reference holds it ("absent" where none does) and the
    case mean (``stats.case_mean``, the mean the demo prints)."""
    lines = ["| trainer | " + " | ".join(organs) + " | case mean |", "|---" * (len(organs) + 2) + "|"]
    for t in trainers:
        cells = []
        for organ in organs:
            mean = organ_mean(rows, t, organ, "dice")
            cells.append(ABSENT if math.isnan(mean) else fmt(mean))
        cells.append(fmt(case_mean(rows, t, organs, "dice")))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _spread(value) -> str:
    return "one seed" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt(value)


def _comparison_table(table: list, budgets: dict = None) -> list:
    budgets = budgets or {}
    lines = ["| trainer | organ | n | mean diff | 95% CI | p (Wilcoxon) | wins / ties / losses | seeds | "
             "gain per fold | seed sd (baseline / arm) | verdict | budget |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['trainer']} | {r['organ']} | {r['n_pairs']} | {fmt(r['mean_diff'])} | "
                     f"{fmt_ci(r['ci_low'], r['ci_high'], r['n_pairs'])} | {fmt_test(r['p_wilcoxon'], r['n_pairs'])} | "
                     f"{r['wins']} / {r['ties']} / {r['losses']} | {r.get('n_seeds', 1)} | "
                     f"{r.get('fold_gains', '')} | {_spread(r.get('seed_sd_baseline'))} / "
                     f"{_spread(r.get('seed_sd_arm'))} | {r.get('verdict', '')} | "
                     f"{budgets.get(r['trainer'], {}).get('budget', '')} |")
    return lines


BUDGET_COLUMNS = ("trainer", "baseline", "budget", "segmentation_iterations", "baseline_segmentation_iterations",
                  "pretraining_iterations", "weights_run_iterations", "total_iterations", "baseline_total_iterations",
                  "pretraining_seconds")


def _weights_runs_cost(study, trainer: str) -> tuple:
    """Iterations and epoch seconds of the runs that wrote the arm's weights files (read from the training logs
    next to each distinct file; (0, 0) without a weights file, NaN where the file has no logs beside it)."""
    arm = study.arm(trainer) if hasattr(study, "arm") else None
    if arm is None or arm.weights is None:
        return 0.0, 0.0
    iterations, seconds = 0.0, 0.0
    for file in sorted({arm.weights_file(f) for f in study.folds}):
        folder = Path(file).parent
        if not any(folder.glob("training_log_*.txt")):
            return math.nan, math.nan
        cost = run_cost(folder)
        iterations += cost["iterations"]
        seconds += cost["pretrain_seconds"] + cost["epoch_seconds"]
    return iterations, seconds


def budgets(study, costs: list) -> dict:
    """Per compared trainer, the budget of its comparison with the baseline (iterations summed over folds):
    'equal total iterations', 'equal segmentation iterations' (pretraining, in the run or in the run that wrote its
    weights file, on top and stated), 'equal iterations' (no pretraining on either side) or 'unequal'."""
    def sums(trainer):
        mine = [c for c in costs if c["trainer"] == trainer]
        seg = sum(c["iterations_per_epoch"] * c["epochs"] for c in mine)
        pre = sum(c["iterations_per_epoch"] * c["pretrain_epochs"] for c in mine)
        return seg, pre, sum(c["pretrain_seconds"] for c in mine)
    baseline = study.trainers[0]
    b_seg, b_pre, _ = sums(baseline)
    b_ext, _ = _weights_runs_cost(study, baseline)
    b_total = b_seg + b_pre + b_ext
    out = {}
    for trainer in study.trainers[1:]:
        seg, pre, pre_s = sums(trainer)
        ext, ext_s = _weights_runs_cost(study, trainer)
        total = seg + pre + ext
        if math.isnan(total) or math.isnan(b_total):
            label = (f"equal segmentation iterations ({seg:.0f}); the weights file's own training cost is unknown "
                     "(no training log beside it)") if seg == b_seg else "unequal (weights file cost unknown)"
        elif total == b_total and seg == b_seg:
            label = f"equal iterations ({total:.0f})"
        elif total == b_total:
            label = f"equal total iterations ({total:.0f}: {seg:.0f} segmentation + {pre + ext:.0f} pretraining)"
        elif seg == b_seg:
            label = (f"equal segmentation iterations ({seg:.0f}); pretraining on top: +{pre + ext:.0f} iterations, "
                     f"+{pre_s + ext_s:.0f} s")
        else:
            label = f"unequal: segmentation {seg:.0f} vs {b_seg:.0f}, total {total:.0f} vs {b_total:.0f} iterations"
        out[trainer] = {"trainer": trainer, "baseline": baseline, "budget": label, "segmentation_iterations": seg,
                        "baseline_segmentation_iterations": b_seg, "pretraining_iterations": pre,
                        "weights_run_iterations": ext, "total_iterations": total,
                        "baseline_total_iterations": b_total, "pretraining_seconds": pre_s + ext_s}
    return out


def pretraining_pool(file) -> str:
    """The pretraining budget an encoder file records (``checkpoint_sacl_encoder.pth``, also as prepare-finetune
    hands it on): how many scans the dataset it was pretrained on holds, of them how many labelled and how many
    pseudo-labelled where that dataset is a merge with pseudo-labels (``sacl_pseudo_labels`` of merge-datasets,
    in the dataset.json the file carries), its fold, and its pretraining iterations (epochs x iterations per
    epoch); None for a file that records no pretraining."""
    import torch
    from nnunet_sacl.nnunet.partial_labels import PSEUDO_KEY
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:       # unreadable, or not a plain weights file: the budget says nothing of it
        return None
    settings = (checkpoint.get("sacl") or {}).get("pretraining") or {}
    init_args = checkpoint.get("init_args") or {}
    if not settings.get("epochs") or not settings.get("iterations_per_epoch"):
        return None
    dataset_json = init_args.get("dataset_json") or {}
    pseudo = dataset_json.get(PSEUDO_KEY) or {}
    scans = f"{dataset_json.get('numTraining', '?')} scans"
    if "pseudo_labelled_cases" in pseudo:
        scans += f" ({pseudo.get('labelled_cases', 0)} labelled + {pseudo['pseudo_labelled_cases']} pseudo-labelled)"
    elif pseudo:
        scans += " (all pseudo-labelled)"
    epochs, per_epoch = int(settings["epochs"]), int(settings["iterations_per_epoch"])
    return (f"pretrained on {(init_args.get('plans') or {}).get('dataset_name', '?')}, {scans}, fold "
            f"{init_args.get('fold', '?')}: {epochs} epochs x {per_epoch} iterations = {epochs * per_epoch} "
            f"pretraining iterations at batch size {settings.get('batch_size', '?')}")


def pretraining_pools(study) -> dict:
    """Per weights-file arm whose files record their pretraining (``pretraining_pool``), what they record."""
    pools = {}
    for arm in getattr(study, "arms", []):
        if arm.weights is not None:
            found = {pretraining_pool(arm.weights_file(f)) for f in study.folds} - {None}
            if found:
                pools[arm.name] = "; ".join(sorted(found))
    return pools


def arm_pseudo_dice(study, trainer: str) -> dict:
    """Segmentation epoch -> the arm's pseudo Dice, mean over its folds' training logs."""
    curves = [pseudo_dice_curve(r.folder) for r in study.runs if r.trainer == trainer]
    epochs = sorted({e for c in curves for e in c})
    return {e: float(np.nanmean([c[e] for c in curves if e in c])) for e in epochs}


def pseudo_dice_plot(study, path: Path) -> None:
    """Each arm's pseudo Dice (nnU-Net's per-epoch pseudo Dice, ``training_cost.pseudo_dice_curve``, mean over organs
    and folds) against the segmentation epoch: does an arm start faster?"""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for t in study.trainers:
        curve = arm_pseudo_dice(study, t)
        ax.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=t)
    ax.set_xlabel("segmentation epoch")
    ax.set_ylabel("pseudo Dice (mean over organs and folds)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=100)


def _cost_table(costs: list, trainers: list) -> list:
    lines = ["| trainer | runs | pretraining epochs | pretraining time (s) | segmentation epochs | "
             "segmentation time (s) | iterations | total epoch time (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in trainers:
        mine = [c for c in costs if c["trainer"] == t]
        total = {k: sum(c[k] for c in mine) for k in COST_COLUMNS}
        lines.append(f"| {t} | {len(mine)} | {total['pretrain_epochs']} | {total['pretrain_seconds']:.1f} | "
                     f"{total['epochs']} | {total['epoch_seconds']:.1f} | {fmt(total['iterations'], 0)} | "
                     f"{total['pretrain_seconds'] + total['epoch_seconds']:.1f} | {total['wall_seconds']:.1f} |")
    return lines


FEWEST_CASES_TO_PLOT = 2


def paired_plot(rows: list, trainers: list, organs: list, path: Path) -> bool:
    """Per compared trainer: each case's mean Dice under the baseline (x) and the trainer (y); above the diagonal
    the trainer is better. Not drawn (False; an older picture is removed) when no trainer has
    ``FEWEST_CASES_TO_PLOT`` case pairs: one point says no more than the table."""
    from matplotlib.figure import Figure
    others = trainers[1:]
    if max((paired_values(rows, t, trainers[0], organs, "dice")[0].size for t in others), default=0) \
            < FEWEST_CASES_TO_PLOT:
        Path(path).unlink(missing_ok=True)
        return False
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
    return True


def write_report(study, rows: list, costs: list, command: str = None) -> Path:
    out, organs, trainers = Path(study.out_dir), list(study.labels), study.trainers
    out.mkdir(parents=True, exist_ok=True)
    write_csv([{k: r[k] for k in PER_CASE_COLUMNS} for r in rows], out / "per_case.csv")
    dice_table = compare_runs_with_baseline(rows, trainers, organs, "dice")
    nsd_table = compare_runs_with_baseline(rows, trainers, organs, "nsd")
    write_csv(dice_table, out / "comparison.csv")
    write_csv(nsd_table, out / "comparison_nsd.csv")
    write_csv([{"trainer": c["trainer"], "fold": c["fold"], "seed": c.get("seed"), **{k: c[k] for k in COST_COLUMNS}}
               for c in costs], out / "cost.csv")
    box_plot({t: [r for r in rows if r["trainer"] == t] for t in trainers}, organs, [("dice", "Dice per case")],
             out / "dice_boxplot.png")   # bars for one case, dots for a few (``report.drawing``)
    pairs_drawn = paired_plot(rows, trainers, organs, out / "case_mean_pairs.png")
    if hasattr(study, "runs"):
        pseudo_dice_plot(study, out / "pseudo_dice.png")
    budget = budgets(study, costs)
    write_csv([{k: b[k] for k in BUDGET_COLUMNS} for b in budget.values()], out / "budget.csv")
    source = (f"test set {study.test_images} (labels {study.test_labels}), predicted by each fold's model"
              if study.test_images else "each fold's validation cases (nnU-Net's fold_X/validation predictions)")
    lines = [f"# Study: {', '.join(trainers)} on {study.dataset}", "",
             f"- configuration `{study.configuration}`, plans `{study.plans}`, folds {' '.join(map(str, study.folds))}, "
             f"device `{study.device}`",
             f"- evaluated on {source}; NSD tolerance {study.tolerance:g} mm",
             f"- baseline: `{trainers[0]}`; differences are trainer - baseline"]
    seeds = getattr(study, "seeds", None)
    if seeds:
        lines.append(f"- seeds {' '.join(map(str, seeds))}: every arm x fold trained once per seed ($SACL_SEED); "
                     "the verdicts compare runs (fold x seed), see \"How to read this\"")
    else:
        lines.append("- one run per arm and fold (no --seeds): the statistics cover one seed. Another seed of the same "
                     "trainer can move a fold's Dice by a few points, so no difference is called a gain or a loss "
                     "(verdict `level`); run the study with --seeds 1 2 3 for verdicts")
    if getattr(study, "train_cases", None) is not None:
        lines.append(f"- regime: {study.train_cases} training case(s) per fold (dataset `{study.dataset}`, "
                     "validation and test cases unchanged)")
    for arm in getattr(study, "arms", []):
        if arm.weights is not None:
            lines.append(f"- `{arm.name}`: `{arm.trainer}` trained with `-pretrained_weights {arm.weights}` "
                         f"(plans `{arm.plans(study.plans)}`)")
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "## Mean Dice per organ", ""] + _mean_table(rows, trainers, organs)
    lines += ["", "## Paired comparison with the baseline (Dice)", ""] + _comparison_table(dice_table, budget)
    lines += ["", "## Paired comparison with the baseline (NSD)", ""] + _comparison_table(nsd_table, budget)
    lines += ["", "## Budget of each comparison", "",
              "Iterations summed over runs (folds x seeds; epochs from nnU-Net's logging, iterations per epoch from debug.json). Equal segmentation iterations: "
              "pretraining (in the run, or in the run that wrote an arm's weights file) comes on top and is stated; "
              "equal total iterations: pretraining is taken from the segmentation budget.", ""]
    lines += [f"- `{t}` vs `{b['baseline']}`: {b['budget']}" for t, b in budget.items()]
    lines += [f"- `{t}`'s weights file: {pool}" for t, pool in pretraining_pools(study).items()]
    lines += ["", "## Cost (from nnU-Net's logging and training logs, summed over runs)", ""] + _cost_table(costs, trainers)
    by_trainer = {t: [r for r in rows if r["trainer"] == t] for t in trainers}
    kind = drawing(by_trainer, organs, "dice")
    plots = {"boxes": "dice_boxplot.png (a box per organ and trainer)",
             "bars": "dice_boxplot.png (one case: a bar per organ and trainer, as there is no spread to box)",
             "dots": f"dice_boxplot.png (each case a dot: fewer than {FEWEST_FOR_A_BOX} cases, too few for a box)"}
    plots = [plots[kind]]
    if pairs_drawn:
        plots.append("case_mean_pairs.png")
    else:
        plots.append(f"no case_mean_pairs.png (drawn from {FEWEST_CASES_TO_PLOT} case pairs on: a single point "
                     "says no more than the table)")
    lines += ["", "## How to read this", "",
              f"An organ counts only in the cases whose reference label holds it; `{ABSENT}`: in no evaluated case's "
              "reference, so its Dice is undefined. A pair is one case, each side averaged over the folds that "
              f"evaluated it; `{MEAN}` and the case mean above are each case's mean over the organs in its reference "
              "label (the same organs for every trainer), the mean `nnunet-sacl demo` prints. The 95% CI is the "
              f"percentile interval of the mean difference over {BOOTSTRAP_RESAMPLES:,} bootstrap resamples "
              f"(seed {BOOTSTRAP_SEED}): of the seeds within each fold, then of the cases (with one seed, of the "
              "cases only). Seed sd: how far another seed moves one run's mean (sd over seeds within a fold, pooled "
              "over folds). Verdict: `gain` when the CI lies above 0 and the mean difference exceeds the baseline's "
              "seed sd, `loss` the mirror image, else `level`; with one seed always `level`, as nothing can stand "
              "clear of an unmeasured spread. p is the two-sided Wilcoxon signed-rank test over the cases, each "
              "averaged over its runs (scipy, zero differences "
              f"dropped): how consistent a difference is over cases, not whether it survives another seed. "
              f"Under {MIN_PAIRS} pairs neither is computed (`n = K: no test`, `no CI`): the exact test "
              f"cannot reach p < 0.05 below {MIN_PAIRS} pairs, and a bootstrap of so few cases has no 95% coverage. "
              "Cost: pretraining and segmentation epochs with their summed epoch times, iterations = iterations per "
              "epoch x all epochs, wall time = first to last line of every training log (start-up and validation "
              "included).", "",
              "Files: per_case.csv, comparison.csv, comparison_nsd.csv, cost.csv, budget.csv, pseudo_dice.png, "
              + ", ".join(plots) + "."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


REGIME_COLUMNS = ("train_cases", "trainer", "baseline", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
                  "wins", "ties", "losses", "budget")


def _k_position(study) -> float:
    """x of a regime in the plot: K, or for 'all' the mean number of training cases of its folds."""
    if study.train_cases != "all":
        return float(study.train_cases)
    import json
    splits = json.loads((study.preprocessed / "splits_final.json").read_text())
    return float(np.mean([len(splits[f]["train"]) for f in study.folds]))


def write_regimes_report(studies: list, reports: list, command: str = None) -> Path:
    """STUDY_DIR/report.md over the regimes: each regime's case-mean Dice comparison (read from its
    comparison.csv), regimes.csv, and dice_diff_vs_train_cases.png (mean difference and 95% CI against K per arm)."""
    import csv
    out = Path(studies[0].out_dir).parent
    rows = []
    for study, report in zip(studies, reports):
        with open(Path(report).parent / "comparison.csv") as f:
            table = [r for r in csv.DictReader(f) if r["organ"] == MEAN]
        with open(Path(report).parent / "budget.csv") as f:
            budget = {r["trainer"]: r["budget"] for r in csv.DictReader(f)}
        for r in table:
            rows.append({"train_cases": study.train_cases, "trainer": r["trainer"], "baseline": r["baseline"],
                         **{k: r[k] for k in REGIME_COLUMNS[3:-1]}, "budget": budget.get(r["trainer"], ""),
                         "_x": _k_position(study)})
    write_csv([{k: r[k] for k in REGIME_COLUMNS} for r in rows], out / "regimes.csv")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="grey", linewidth=1)
    for i, t in enumerate(studies[0].trainers[1:]):
        mine = sorted((r for r in rows if r["trainer"] == t), key=lambda r: r["_x"])
        x = np.array([r["_x"] for r in mine])
        y = np.array([float(r["mean_diff"]) for r in mine])
        err = np.array([[y[j] - float(r["ci_low"]), float(r["ci_high"]) - y[j]] for j, r in enumerate(mine)]).T
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, color=f"C{i + 1}", label=t)
    ax.set_xticks(sorted({r["_x"] for r in rows}),
                  [str(s.train_cases) if s.train_cases != "all" else f"all ({_k_position(s):g})" for s in
                   sorted(studies, key=_k_position)])
    ax.set_xlabel("training cases per fold (K)")
    ax.set_ylabel(f"mean Dice difference vs {studies[0].trainers[0]}")
    ax.legend(fontsize="small")
    fig.savefig(out / "dice_diff_vs_train_cases.png", dpi=100)
    lines = [f"# Study over training-set sizes: {', '.join(studies[0].trainers)}", "",
             f"- baseline `{studies[0].trainers[0]}`; regimes (training cases per fold): "
             + ", ".join(f"[{s.train_cases}]({Path(r).parent.name}/report.md) (dataset `{s.dataset}`)"
                         for s, r in zip(studies, reports))]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "## Case-mean Dice against the baseline, per regime", "",
              "| K | trainer | n | mean diff | 95% CI | p (Wilcoxon) | wins / ties / losses | budget |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['train_cases']} | {r['trainer']} | {r['n_pairs']} | {fmt(float(r['mean_diff']))} | "
                     f"{fmt_ci(float(r['ci_low']), float(r['ci_high']), r['n_pairs'])} | "
                     f"{fmt_test(float(r['p_wilcoxon']), r['n_pairs'])} | {r['wins']} / {r['ties']} / {r['losses']} | "
                     f"{r['budget']} |")
    lines += ["", "Each regime's folder holds its full report (per organ, NSD, cost, pseudo_dice.png). Files here: "
              "regimes.csv, dice_diff_vs_train_cases.png."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
