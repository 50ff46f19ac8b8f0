"""The seeds study's endpoints from the study tool's outputs (README.md beside this file, "Endpoints"):

    python docs/studies/seeds/report.py            # reads outputs/seeds_*_{val,test}/, writes outputs/results.md

- validation: comparison.csv's organ `mean` row per arm (mean difference, run-level CI, seed spreads, verdict);
- held-out scan: per run (fold x seed) the mean Dice over the organs its label holds, each arm's difference to A0's
  run of the same fold and seed, the mean over runs, the gain per fold (mean over seeds), A0's seed spread on this
  scan (and how far apart its two widest seeds lie within a fold), and the registered rule (mean gain above A0's
  spread and positive in at least 2 of the 3 folds);
- the seed-1 check: seed 1's per-case numbers against the length study's (same trainers, same seed).
"""
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "outputs"
LENGTH = HERE.parent / "length" / "outputs"
ARMS = {"nnUNetTrainer_len825": "A0", "SACLTrainer_joint_len825": "A1", "SACLTrainer_len825_pre225": "A2"}
BASE = "nnUNetTrainer_len825"


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def held_out(per_case):
    """(trainer, fold, seed) -> mean Dice over the organs in the held-out label."""
    values = defaultdict(list)
    for r in per_case:
        if int(r["reference_voxels"]) > 0:
            values[(r["trainer"], int(r["fold"]), int(r["seed"]))].append(float(r["dice"]))
    return {k: sum(v) / len(v) for k, v in values.items()}


def runs_by_fold(means: dict, trainer: str) -> dict:
    """fold -> the values of ``trainer``'s runs of that fold (one per seed)."""
    by_fold = defaultdict(list)
    for (t, fold, seed), v in means.items():
        if t == trainer:
            by_fold[fold].append(v)
    return by_fold


def pooled_seed_sd(means: dict, trainer: str) -> float:
    """sd over seeds of a run's value within a fold, pooled over folds (root mean variance), as the study tool."""
    variances = []
    for v in runs_by_fold(means, trainer).values():
        if len(v) > 1:
            m = sum(v) / len(v)
            variances.append(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return math.sqrt(sum(variances) / len(variances)) if variances else math.nan


def largest_seed_range(means: dict, trainer: str) -> float:
    """The largest distance between two seeds' runs of the same fold (what the demo's one-run caveat quotes)."""
    ranges = [max(v) - min(v) for v in runs_by_fold(means, trainer).values() if len(v) > 1]
    return max(ranges) if ranges else math.nan


def held_out_table(per_case) -> list:
    means = held_out(per_case)
    spread = pooled_seed_sd(means, BASE)
    widest = largest_seed_range(means, BASE)
    lines = [f"A0's seed spread on the held-out scan: {spread:.4f} (sd); two seeds of one fold apart by up to "
             f"{widest:.3f}" if math.isfinite(spread) else
             "A0's seed spread on the held-out scan: unmeasured (one seed)", "",
             "| arm | runs | held-out mean Dice | gain over A0 (mean over runs) | gain per fold (mean over seeds) | "
             "arm's seed spread | gain by the rule |", "|---|---|---|---|---|---|---|"]
    for trainer, arm in ARMS.items():
        mine = {k: v for k, v in means.items() if k[0] == trainer}
        value = sum(mine.values()) / len(mine)
        if trainer == BASE:
            lines.append(f"| {arm} `{trainer}` | {len(mine)} | {value:.3f} | - | - | {spread:.4f} | - |")
            continue
        diffs = {(f, s): v - means[(BASE, f, s)] for (_, f, s), v in mine.items()}
        gain = sum(diffs.values()) / len(diffs)
        folds = sorted({f for f, _ in diffs})
        per_fold = [sum(d for (f2, _), d in diffs.items() if f2 == f) / sum(1 for f2, _ in diffs if f2 == f)
                    for f in folds]
        rule = (math.isfinite(spread) and gain > spread and sum(g > 0 for g in per_fold) >= 2)
        lines.append(f"| {arm} `{trainer}` | {len(mine)} | {value:.3f} | {gain:+.4f} | "
                     f"{' / '.join(f'{g:+.3f}' for g in per_fold)} | {pooled_seed_sd(means, trainer):.4f} | "
                     f"{'yes' if rule else 'no'} |")
    return lines


def validation_table(comparison) -> list:
    lines = ["| arm | n | mean diff | 95% CI (runs) | wins / ties / losses | seeds | gain per fold | seed sd A0 / arm | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison:
        if r["organ"] != "mean":
            continue
        f = lambda k: float(r[k])
        lines.append(f"| {ARMS[r['trainer']]} `{r['trainer']}` | {r['n_pairs']} | {f('mean_diff'):+.4f} | "
                     f"[{f('ci_low'):+.4f}, {f('ci_high'):+.4f}] | {r['wins']} / {r['ties']} / {r['losses']} | "
                     f"{r['n_seeds']} | {r['fold_gains']} | {f('seed_sd_baseline'):.4f} / {f('seed_sd_arm'):.4f} | "
                     f"**{r['verdict']}** |")
    return lines


def seed_one_check(stage: str) -> str:
    """Seed 1's Dice and NSD per case and organ against the length study's stage-1 outputs."""
    mine = {(r["trainer"], r["fold"], r["case"], r["organ"]): (r["dice"], r["nsd"])
            for r in rows(OUT / f"seeds_1_{stage}" / "per_case.csv") if r["seed"] == "1"}
    theirs = {(r["trainer"], r["fold"], r["case"], r["organ"]): (r["dice"], r["nsd"])
              for r in rows(LENGTH / f"stage1_{stage}" / "per_case.csv") if r["trainer"] in ARMS}
    if set(mine) != set(theirs):
        return f"{stage}: the rows differ ({len(mine)} here, {len(theirs)} in the length study)"
    differ = [k for k in mine if tuple(map(float, mine[k])) != tuple(map(float, theirs[k]))]
    if not differ:
        return f"{stage}: all {len(mine)} (case, organ) Dice and NSD values of seed 1 equal the length study's exactly"
    sizes = []
    for trainer, arm in ARMS.items():     # how far apart, per arm: mean Dice over the pairs both define, max change
        pairs = [(float(mine[k][0]), float(theirs[k][0])) for k in mine if k[0] == trainer]
        pairs = [(a, b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
        sizes.append(f"{arm} mean Dice {sum(b for _, b in pairs) / len(pairs):.4f} then, "
                     f"{sum(a for a, _ in pairs) / len(pairs):.4f} now, largest change {max(abs(a - b) for a, b in pairs):.3f}")
    return (f"{stage}: {len(differ)} of {len(mine)} (case, organ) values differ from the length study's (first: "
            f"{differ[0]}); " + "; ".join(sizes))


def main() -> int:
    stages = sorted(p.name[:-4] for p in OUT.glob("seeds_*_val") if (OUT / (p.name[:-4] + "_test")).is_dir())
    lines = ["# Seeds study: endpoints by stage", "", "Written by `python docs/studies/seeds/report.py` from "
             "`outputs/`.", ""]
    if (OUT / "seeds_1_val").is_dir():
        lines += ["## Seed 1 against the length study", ""] + [f"- {seed_one_check(s)}" for s in ("val", "test")] + [""]
    for stage in stages:
        seeds = stage.split("_")[1:]
        lines += [f"## Seeds {' '.join(seeds)}", "", "Validation case mean (12 crops):", ""]
        lines += validation_table(rows(OUT / f"{stage}_val" / "comparison.csv"))
        lines += ["", "Held-out scan (mean Dice over the organs in its label):", ""]
        lines += held_out_table(rows(OUT / f"{stage}_test" / "per_case.csv")) + [""]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
