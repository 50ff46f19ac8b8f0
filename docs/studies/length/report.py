"""The length study's results from its outputs and models (README.md beside this file, "Results"):

    python docs/studies/length/report.py WORKDIR OUTPUTS

WORKDIR is run.sh's (nnU-Net's folders, the study calls' folders); OUTPUTS is where the tables (results.md,
pretraining.csv, endpoints.csv) and plots (endpoints_vs_pretraining.png, endpoints_vs_training_length.png,
pretraining_curves.png) go. Stage 2's rows are left out while it has not run.

Primary endpoints: validation case-mean difference (the study's comparison.csv, organ `mean`) and the held-out
scan's mean Dice over the organs present in its label, per fold's model (per_case.csv). Secondary, per SACL arm and
fold: phase 1's validation curve (nearest-neighbour organ F1 per epoch, read from the checkpoint's logging), and the
silhouette (cosine) of the held-out scan's organ embeddings under the encoder phase 1 handed over and under the
seeded initial encoder.
"""
import csv
import sys
from pathlib import Path

import numpy as np

# the earlier study's readers of the study tool's outputs (one held-out endpoint, computed one way)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prereg"))
from report import fmt, heldout, organs_present, rows  # noqa: E402

STAGES = {   # stage: (baseline, arms in the registered order, label of each)
    "stage1": ("nnUNetTrainer_len825", ["nnUNetTrainer_len825_seed2", "SACLTrainer_joint_len825",
                                        "SACLTrainer_len825_pre225", "SACLTrainer_len825_pre900",
                                        "SACLTrainer_len825_pre3600"]),
    "stage2": ("nnUNetTrainer_len3300", ["SACLTrainer_joint_len3300"]),
}
LABELS = {"nnUNetTrainer_len825": "A0 baseline, 825", "nnUNetTrainer_len825_seed2": "A0' baseline seed 2, 825",
          "SACLTrainer_joint_len825": "A1 joint 0.1, 825", "SACLTrainer_len825_pre225": "A2 SACL 225 + 825",
          "SACLTrainer_len825_pre900": "A3 SACL 900 + 825", "SACLTrainer_len825_pre3600": "A4 SACL 3,600 + 825",
          "nnUNetTrainer_len3300": "B0 baseline, 3,300", "SACLTrainer_joint_len3300": "B1 joint 0.1, 3,300"}
PRETRAINING = {"SACLTrainer_len825_pre225": 225, "SACLTrainer_len825_pre900": 900, "SACLTrainer_len825_pre3600": 3600}
DATASET, CONFIGURATION, PLANS, FOLDS = "Dataset990_SACLDemoCT", "2d", "nnUNetPlans", (0, 1, 2)


def endpoints(work: Path, organs: list) -> dict:
    """{arm: dict(stage, baseline, val diff/CI/p/wins..., held-out per fold, its baseline's per fold)}."""
    out = {}
    for stage, (baseline, arms) in STAGES.items():
        val, test = work / f"{stage}_val", work / f"{stage}_test"
        if not (val / "comparison.csv").is_file() or not (test / "per_case.csv").is_file():
            continue
        held = heldout(rows(test / "per_case.csv"), organs)
        budget = {r["trainer"]: r["budget"] for r in rows(val / "budget.csv")}
        cost = {}
        for r in rows(val / "cost.csv"):
            cost.setdefault(r["trainer"], []).append(float(r["wall_seconds"]))
        out[baseline] = dict(stage=stage, baseline=None, held=held[baseline], cost=cost[baseline])
        for r in rows(val / "comparison.csv"):
            if r["organ"] == "mean" and r["trainer"] in arms:
                t = r["trainer"]
                out[t] = dict(stage=stage, baseline=baseline, budget=budget.get(t, ""), n=int(r["n_pairs"]),
                              diff=float(r["mean_diff"]), ci=(float(r["ci_low"]), float(r["ci_high"])),
                              p=float(r["p_wilcoxon"]), wtl=(r["wins"], r["ties"], r["losses"]), held=held[t],
                              base_held=held[baseline], cost=cost[t])
    return out


def pays_off(e: dict) -> tuple:
    above = sum(e["held"][f] > e["base_held"][f] for f in e["held"])
    return above, e["ci"][0] > 0 and above >= 2


def model_folder(work: Path, trainer: str) -> Path:
    return work / "nnUNet_results" / DATASET / f"{trainer}__{PLANS}__{CONFIGURATION}"


def pretraining_curve(work: Path, trainer: str, fold: int) -> list:
    """Phase 1's pseudo Dice per epoch (nearest-neighbour organ F1 of validation embeddings): nnU-Net's logging in
    the phase's final checkpoint (this study's own file)."""
    import torch
    checkpoint = torch.load(model_folder(work, trainer) / f"fold_{fold}" / "pretraining" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint["logging"]["mean_fg_dice"]]


def heldout_case(work: Path, trainer: str):
    """The held-out scan preprocessed with the model's plans as nnU-Net's preprocessing does it: (id, data, seg)."""
    import json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    folder = model_folder(work, trainer)
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    cm = plans.get_configuration(CONFIGURATION)
    raw = work / "nnUNet_raw" / DATASET
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    if len(images) != 1:
        raise SystemExit(f"expected one held-out scan in {raw / 'imagesTs'}, found {len(images)}")
    case = images[0].name[:-len("_0000.nii.gz")]
    data, seg, _ = cm.preprocessor_class(verbose=False).run_case(
        [str(images[0])], str(raw / "labelsTs" / f"{case}.nii.gz"), plans, cm, dataset_json)
    seg = np.asarray(seg).copy()
    seg[seg < 0] = 0
    return case, np.asarray(data, dtype=np.float32), seg


def silhouettes(work: Path, trainer: str, fold: int, case) -> dict:
    """Silhouette (cosine) of the held-out scan's organ embeddings: the encoder as initialised (seed 0) and the one
    phase 1 handed over (checkpoint_sacl_encoder.pth)."""
    from nnunet_sacl.analysis.embeddings import build_network, cluster_quality, organ_embeddings
    from nnunet_sacl.nnunet.checkpoints import read_checkpoint
    folder = model_folder(work, trainer)
    pretrained = read_checkpoint(str(folder / f"fold_{fold}" / "checkpoint_sacl_encoder.pth"))["network_weights"]
    out = {}
    for name, weights in (("initial", None), ("pretrained", pretrained)):
        network, _, cm, lm = build_network(str(folder), CONFIGURATION, weights, seed=0)
        out[name] = cluster_quality(*organ_embeddings(network, [case], cm.patch_size, lm.num_segmentation_heads,
                                                      lm.ignore_label))
    return out


def spearman(x, y) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(x, y).statistic)


def pyplot():
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, out_png: Path) -> None:
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_pretraining(ends: dict, pre: dict, out_png: Path) -> None:
    plt = pyplot()
    baseline = ends["nnUNetTrainer_len825"]
    arms = [t for t in PRETRAINING if t in ends]
    xs = [0] + [PRETRAINING[t] for t in arms]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    val = [0.0] + [ends[t]["diff"] for t in arms]
    err = [[0.0] + [ends[t]["diff"] - ends[t]["ci"][0] for t in arms],
           [0.0] + [ends[t]["ci"][1] - ends[t]["diff"] for t in arms]]
    axes[0].errorbar(xs, val, yerr=err, marker="o", capsize=4)
    axes[0].set_title("validation crops: case-mean Dice, SACL - A0 (95% CI)", fontsize=10)
    for fold in FOLDS:
        axes[1].plot(xs, [baseline["held"][fold]] + [ends[t]["held"][fold] for t in arms], marker="o", alpha=0.5,
                     label=f"fold {fold}")
    axes[1].plot(xs, [np.mean(list(baseline["held"].values()))] + [np.mean(list(ends[t]["held"].values()))
                                                                   for t in arms], marker="s", color="k", lw=2,
                 label="mean of folds")
    axes[1].set_title("held-out scan: mean Dice over its 8 organs (0 = A0, no pretraining)", fontsize=10)
    axes[1].legend(fontsize=8)
    for key, marker, label in (("silhouette", "o", "silhouette on the held-out scan"),
                               ("final_f1", "s", "final nearest-neighbour organ F1")):
        axes[2].plot([PRETRAINING[t] for t in arms], [np.mean([pre[(t, f)][key] for f in FOLDS]) for t in arms],
                     marker=marker, label=f"{label} (mean of folds)")
    axes[2].set_title("what pretraining reached", fontsize=10)
    axes[2].legend(fontsize=8)
    axes[0].axhline(0, color="k", lw=1)
    for ax in axes:
        ax.set_xscale("symlog", linthresh=200)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("pretraining iterations (segmentation: 825)")
    save(plt, fig, out_png)


def plot_training_length(ends: dict, out_png: Path) -> None:
    plt = pyplot()
    pairs = [(825, "nnUNetTrainer_len825", "SACLTrainer_joint_len825"),
             (3300, "nnUNetTrainer_len3300", "SACLTrainer_joint_len3300")]
    pairs = [p for p in pairs if p[2] in ends]
    xs = [p[0] for p in pairs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    joint = [ends[p[2]] for p in pairs]
    axes[0].errorbar(xs, [e["diff"] for e in joint], yerr=[[e["diff"] - e["ci"][0] for e in joint],
                                                           [e["ci"][1] - e["diff"] for e in joint]],
                     marker="o", capsize=4)
    axes[0].axhline(0, color="k", lw=1)
    axes[0].set_title("validation crops: case-mean Dice, joint - baseline of its length (95% CI)", fontsize=10)
    for which, label in ((1, "baseline"), (2, "joint 0.1")):
        held = [ends[p[which]]["held"] for p in pairs]
        line = axes[1].plot(xs, [np.mean(list(h.values())) for h in held], marker="o", label=f"{label} (mean)")[0]
        for x, h in zip(xs, held):
            axes[1].scatter([x] * len(h), list(h.values()), color=line.get_color(), alpha=0.4, s=14)
    axes[1].set_title("held-out scan: mean Dice over its 8 organs (dots: folds)", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xlabel("segmentation iterations")
    save(plt, fig, out_png)


def plot_curves(curves: dict, out_png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, t in enumerate(PRETRAINING):
        for fold in FOLDS:
            if (t, fold) in curves:
                c = curves[(t, fold)]
                ax.plot(np.arange(1, len(c) + 1) * 75, c, color=f"C{i}", alpha=0.7,
                        label=f"{PRETRAINING[t]} iterations" if fold == 0 else None)
    ax.set_xlabel("pretraining iterations")
    ax.set_ylabel("nearest-neighbour organ F1 (validation)")
    ax.set_title("phase 1's validation curve per arm (one line per fold)", fontsize=10)
    ax.legend(fontsize=8)
    save(plt, fig, out_png)


def main(work: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    raw = work / "nnUNet_raw" / DATASET
    organs = organs_present(raw / "labelsTs", raw / "dataset.json")
    ends = endpoints(work, organs)
    lines = [f"Held-out organs ({len(organs)}): {', '.join(organs)}", "",
             "| arm | trainer | budget against its baseline | n | val: mean diff | 95% CI | p | wins / ties / losses | "
             "held-out: folds 0 / 1 / 2 | held-out mean | diff | folds above | pays off | wall s per run (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table = []
    for t in [t for stage in STAGES.values() for t in [stage[0]] + stage[1]]:
        if t not in ends:
            continue
        e = ends[t]
        held = " / ".join(fmt(e["held"][f]) for f in FOLDS)
        mean = float(np.mean(list(e["held"].values())))
        wall = float(np.mean(e["cost"]))
        if e["baseline"] is None:
            lines.append(f"| {LABELS[t]} | `{t}` | - | | | | | | {held} | {fmt(mean)} | | | | {wall:.0f} |")
            table.append(dict(arm=LABELS[t], trainer=t, heldout_mean=mean, wall_seconds=wall,
                              **{f"heldout_fold{f}": e["held"][f] for f in FOLDS}))
            continue
        above, pays = pays_off(e)
        base_mean = float(np.mean(list(e["base_held"].values())))
        lines.append(f"| {LABELS[t]} | `{t}` | {e['budget']} | {e['n']} | {fmt(e['diff'], sign=True)} | "
                     f"[{fmt(e['ci'][0], sign=True)}, {fmt(e['ci'][1], sign=True)}] | {e['p']:.4f} | "
                     f"{' / '.join(e['wtl'])} | {held} | {fmt(mean)} | {fmt(mean - base_mean, sign=True)} | "
                     f"{above} of 3 | {'yes' if pays else 'no'} | {wall:.0f} |")
        table.append(dict(arm=LABELS[t], trainer=t, baseline=e["baseline"], n_pairs=e["n"], val_mean_diff=e["diff"],
                          ci_low=e["ci"][0], ci_high=e["ci"][1], p_wilcoxon=e["p"], wins=e["wtl"][0],
                          ties=e["wtl"][1], losses=e["wtl"][2], heldout_mean=mean,
                          heldout_diff=mean - base_mean, folds_above=above, pays_off=pays, wall_seconds=wall,
                          **{f"heldout_fold{f}": e["held"][f] for f in FOLDS}))
    with open(out / "endpoints.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in table for k in r))
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(table)

    pre, curves = {}, {}
    if all(t in ends for t in PRETRAINING) and "nnUNetTrainer_len825" in ends:
        case = heldout_case(work, "SACLTrainer_len825_pre225")
        for t in PRETRAINING:
            for fold in FOLDS:
                curves[(t, fold)] = pretraining_curve(work, t, fold)
                s = silhouettes(work, t, fold, case)
                pre[(t, fold)] = dict(trainer=t, pretraining_iterations=PRETRAINING[t], fold=fold,
                                      final_f1=curves[(t, fold)][-1], best_f1=max(curves[(t, fold)]),
                                      silhouette_initial=s["initial"], silhouette=s["pretrained"],
                                      heldout_diff=ends[t]["held"][fold] - ends[t]["base_held"][fold])
        with open(out / "pretraining.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(next(iter(pre.values()))))
            writer.writeheader()
            writer.writerows(pre.values())
        lines += ["", "| arm | fold | final NN organ F1 | best NN organ F1 | silhouette, initial encoder | "
                      "silhouette, pretrained encoder | held-out diff to A0 |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in pre.values():
            lines.append(f"| {LABELS[r['trainer']]} | {r['fold']} | {fmt(r['final_f1'])} | {fmt(r['best_f1'])} | "
                         f"{fmt(r['silhouette_initial'])} | {fmt(r['silhouette'])} | {fmt(r['heldout_diff'], sign=True)} |")
        points = list(pre.values())
        lines += ["", f"Spearman rank correlation over the {len(points)} SACL models: held-out diff vs silhouette "
                      f"{spearman([p['silhouette'] for p in points], [p['heldout_diff'] for p in points]):+.2f}, "
                      f"vs final NN organ F1 "
                      f"{spearman([p['final_f1'] for p in points], [p['heldout_diff'] for p in points]):+.2f}; "
                      f"silhouette vs pretraining iterations "
                      f"{spearman([p['pretraining_iterations'] for p in points], [p['silhouette'] for p in points]):+.2f}"]
        plot_pretraining(ends, pre, out / "endpoints_vs_pretraining.png")
        plot_curves(curves, out / "pretraining_curves.png")
    if "SACLTrainer_joint_len825" in ends:
        plot_training_length(ends, out / "endpoints_vs_training_length.png")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
