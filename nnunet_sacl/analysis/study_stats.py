"""Case-paired comparison of trainers against a baseline: mean difference, bootstrap 95% CI, Wilcoxon signed-rank
p, wins/ties/losses, per organ and for the per-case mean over organs.

A pair is one case: its value under the trainer and under the baseline, each averaged over the folds that
evaluated the case (validation: exactly one fold; a test set: every fold's model). For the case mean, each side
averages the organs where both are defined (``evaluation._paired``); NaN (undefined) values are left out.
"""
import math

import numpy as np

from nnunet_sacl.analysis.evaluation import _paired, wilcoxon_p

MEAN = "mean"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
COMPARISON_COLUMNS = ("trainer", "baseline", "organ", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
                      "wins", "ties", "losses")


def bootstrap_ci(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean paired difference: ``resamples`` draws of n cases with replacement (seeded,
    so a report is reproducible). NaN without pairs."""
    differences = np.asarray(differences, dtype=float)
    if differences.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, differences.size, (resamples, differences.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def case_values(rows: list[dict], trainer: str, metric: str) -> dict:
    """(case, organ) -> the trainer's value, averaged over the folds that evaluated the case (NaN ignored)."""
    collected = {}
    for r in rows:
        if r["trainer"] == trainer:
            collected.setdefault((r["case"], r["organ"]), []).append(float(r[metric]))
    return {key: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for key, v in collected.items()}


def organ_mean(rows: list[dict], trainer: str, organ: str, metric: str = "dice") -> float:
    """The trainer's mean of one organ over every evaluated (fold, case) row, NaN (both masks empty) left out as
    nnU-Net's summary.json does; NaN when no row has a value."""
    values = np.array([r[metric] for r in rows if r["trainer"] == trainer and r["organ"] == organ], dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def paired_values(rows: list[dict], trainer: str, baseline: str, organs: list[str], metric: str):
    """The trainer's and the baseline's per-case values of one organ (or the case mean over ``organs``)."""
    a, b = case_values(rows, trainer, metric), case_values(rows, baseline, metric)
    cases = sorted({case for case, _ in a} & {case for case, _ in b})
    return _paired(a, b, cases, organs)


def compare_with_baseline(rows: list[dict], trainers: list[str], organs: list[str], metric: str = "dice") -> list[dict]:
    """One row per (trainer after the first, organ, then ``mean``), columns ``COMPARISON_COLUMNS``; differences are
    trainer - baseline (the first trainer), so wins are cases where the trainer is better."""
    baseline, table = trainers[0], []
    for trainer in trainers[1:]:
        for organ_set, name in [([o], o) for o in organs] + [(list(organs), MEAN)]:
            a, b = paired_values(rows, trainer, baseline, organ_set, metric)
            diff = a - b
            low, high = bootstrap_ci(diff)
            table.append({"trainer": trainer, "baseline": baseline, "organ": name, "n_pairs": int(diff.size),
                          "mean_diff": float(diff.mean()) if diff.size else math.nan, "ci_low": low, "ci_high": high,
                          "p_wilcoxon": wilcoxon_p(a, b), "wins": int((diff > 0).sum()),
                          "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())})
    return table
