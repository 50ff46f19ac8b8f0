"""The paired statistics of analysis/, one path for ``nnunet-sacl compare`` (two prediction folders) and for a
study (each trainer against the baseline): per organ and for the per-case mean over organs, n pairs, mean and sd of
each side, mean difference, bootstrap 95% CI, Wilcoxon signed-rank p, wins/ties/losses.

What is scored: an organ of a case counts only where the case's reference label holds it (``reference_voxels`` > 0
in the evaluation's rows). There its Dice and NSD are defined for every method, whatever was predicted; an organ
absent from the reference (Dice NaN, or 0 for a false positive, as nnU-Net writes it) is left out of every mean and
test here. So one definition serves the console, the report and the tests: the **case mean** is a case's mean over the
organs in its reference label, the same organs for every method, and an organ's mean is over the cases whose
reference holds it.

A pair is one case. In a study, a case's value under a trainer is first averaged over the folds that evaluated it
(validation: exactly one fold; a test set: every fold's model).

Fewer than ``MIN_PAIRS`` pairs get no test and no interval (NaN): see ``MIN_PAIRS``.
"""
import math
import warnings

import numpy as np

MEAN = "mean"
# The fewest pairs for a Wilcoxon p or a bootstrap CI. Below 6 pairs the exact two-sided signed-rank test cannot
# reach p < 0.05 whatever the data (its smallest p is 2 / 2^n: 0.0625 at n = 5, 0.03125 at n = 6), and the
# percentile bootstrap of a mean resamples so few distinct values (one at n = 1, 126 at n = 5) that its interval
# covers far less than its nominal 95%; a table says "n = K: no test" instead.
MIN_PAIRS = 6
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
COMPARISON_COLUMNS = ("trainer", "baseline", "organ", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
                      "wins", "ties", "losses")


# ---------------------------------------------------------------- on paired arrays

def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for fewer than two values)."""
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon`` defaults: zero differences
    dropped; exact for small samples, with ties or zeros too in scipy >= 1.9, see docs/evaluation.md). 1.0 when every
    difference is zero, NaN without pairs."""
    from scipy import stats
    if a.size == 0:
        return math.nan
    if np.all(a == b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on tiny samples; the p-value is still right
        return float(stats.wilcoxon(a, b).pvalue)


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


def testable(n: int) -> bool:
    """Whether ``n`` pairs are enough for a Wilcoxon p and a bootstrap CI (``MIN_PAIRS``)."""
    return n >= MIN_PAIRS


def paired_statistics(a: np.ndarray, b: np.ndarray) -> dict:
    """Everything a comparison table reports of the pairs (a[i], b[i]); differences are a - b, so a win is a case
    where a is higher. The CI and p are NaN for fewer than ``MIN_PAIRS`` pairs."""
    diff = a - b
    (mean_a, sd_a), (mean_b, sd_b) = mean_sd(a), mean_sd(b)
    low, high = bootstrap_ci(diff) if testable(diff.size) else (math.nan, math.nan)
    return {"n": int(diff.size), "mean_a": mean_a, "sd_a": sd_a, "mean_b": mean_b, "sd_b": sd_b,
            "mean_diff": float(diff.mean()) if diff.size else math.nan, "ci_low": low, "ci_high": high,
            "p_wilcoxon": wilcoxon_p(a, b) if testable(diff.size) else math.nan, "wins": int((diff > 0).sum()),
            "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}


# ---------------------------------------------------------------- on per-case values of two sides

def paired(values_a: dict, values_b: dict, cases: list, organs: list) -> tuple[np.ndarray, np.ndarray]:
    """Per case of ``cases`` ((case, organ) -> value on each side, NaN where not scored): the organ's value (one
    organ) or the case mean over the organs (several), taken over the organs where both sides have a value (the
    organs of the case's reference label: the same on both sides), so both sides average the same organs; cases with
    none are left out."""
    a, b = [], []
    for case in cases:
        pa = np.array([values_a[(case, o)] for o in organs])
        pb = np.array([values_b[(case, o)] for o in organs])
        both = ~np.isnan(pa) & ~np.isnan(pb)
        if both.any():
            a.append(pa[both].mean())
            b.append(pb[both].mean())
    return np.array(a), np.array(b)


def paired_comparison(values_a: dict, values_b: dict, organs: list, mean_label: str = None) -> list:
    """(label, ``paired_statistics``) per organ, then, with a ``mean_label``, for the per-case mean over the organs;
    over the cases both sides have."""
    cases = sorted({case for case, _ in values_a} & {case for case, _ in values_b})
    groups = [([o], o) for o in organs] + ([(list(organs), mean_label)] if mean_label else [])
    return [(label, paired_statistics(*paired(values_a, values_b, cases, organ_set))) for organ_set, label in groups]


# ---------------------------------------------------------------- on rows: (case, organ, metric, reference_voxels)
# of one method, or (trainer, fold, case, organ, metric, reference_voxels) of a study

def in_reference(row: dict) -> bool:
    """Whether the row's organ is in its case's reference label (rows as the evaluation returns them, or read back
    from its CSV)."""
    return float(row["reference_voxels"]) > 0


def scored(row: dict, metric: str) -> float:
    """The row's value where its organ is in the case's reference label, else NaN (not scored)."""
    return float(row[metric]) if in_reference(row) else math.nan


def by_case(rows: list, metric: str) -> dict:
    """(case, organ) -> scored value of one method's rows."""
    return {(r["case"], r["organ"]): scored(r, metric) for r in rows}


def case_values(rows: list, trainer: str, metric: str) -> dict:
    """(case, organ) -> the trainer's scored value, averaged over the folds that evaluated the case."""
    collected = {}
    for r in rows:
        if r["trainer"] == trainer:
            collected.setdefault((r["case"], r["organ"]), []).append(scored(r, metric))
    return {key: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for key, v in collected.items()}


def organ_mean(rows: list, trainer: str, organ: str, metric: str = "dice") -> float:
    """The trainer's mean of one organ over every evaluated (fold, case) row whose reference holds the organ; NaN
    when no reference does."""
    values = np.array([scored(r, metric) for r in rows if r["trainer"] == trainer and r["organ"] == organ])
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def case_mean(rows: list, trainer: str, organs: list, metric: str = "dice") -> float:
    """The trainer's mean over cases of the case mean (each case's mean over the organs of ``organs`` in its
    reference label): the one mean the demo prints and the study's report shows. NaN without a scored case."""
    values = case_values(rows, trainer, metric)
    means = paired(values, values, sorted({case for case, _ in values}), organs)[0]
    return float(means.mean()) if means.size else math.nan


def paired_values(rows: list, trainer: str, baseline: str, organs: list, metric: str):
    """The trainer's and the baseline's per-case values of one organ (or the case mean over ``organs``)."""
    a, b = case_values(rows, trainer, metric), case_values(rows, baseline, metric)
    cases = sorted({case for case, _ in a} & {case for case, _ in b})
    return paired(a, b, cases, organs)


def compare_with_baseline(rows: list, trainers: list, organs: list, metric: str = "dice") -> list:
    """One row per (trainer after the first, organ, then ``mean``), columns ``COMPARISON_COLUMNS``; differences are
    trainer - baseline (the first trainer), so wins are cases where the trainer is better."""
    baseline, table = trainers[0], []
    for trainer in trainers[1:]:
        comparison = paired_comparison(case_values(rows, trainer, metric), case_values(rows, baseline, metric),
                                       organs, MEAN)
        for organ, s in comparison:
            table.append({"trainer": trainer, "baseline": baseline, "organ": organ, "n_pairs": s["n"],
                          **{k: s[k] for k in COMPARISON_COLUMNS[4:]}})
    return table


# ---------------------------------------------------------------- over runs (fold x seed): the seed as what varies
# A study with several seeds compares runs, not one pair of models: a case's value under an arm is a draw of the
# arm's training (seed) as well as of the case. The rule and its reason are in docs/evaluation.md ("Verdicts over
# seeds"); tests/test_study_seeds.py tries it on simulated null studies and on a true gain.

VERDICTS = ("gain", "level", "loss")
RUN_COLUMNS = ("n_seeds", "fold_gains", "seed_sd_baseline", "seed_sd_arm", "verdict")


def run_array(rows: list, trainer: str, folds: list, seeds: list, cases: list, organs: list, metric: str) -> np.ndarray:
    """(folds, seeds, cases) array of the trainer's case value (the organ's, or the case mean over ``organs`` in
    the case's reference), NaN where that run did not evaluate the case."""
    f_at, s_at, c_at = ({v: i for i, v in enumerate(x)} for x in (folds, seeds, cases))
    collected = {}
    for r in rows:
        if r["trainer"] == trainer and r["organ"] in organs:
            key = (f_at[int(r["fold"])], s_at[_seed_of(r)], c_at[r["case"]])
            collected.setdefault(key, []).append(scored(r, metric))
    out = np.full((len(folds), len(seeds), len(cases)), np.nan)
    for key, values in collected.items():
        values = np.array(values)
        if np.isfinite(values).any():
            out[key] = np.nanmean(values)
    return out


def _seed_of(row: dict):
    seed = row.get("seed")
    return None if seed in (None, "", "None") else int(seed)


def seed_spread(values: np.ndarray) -> float:
    """How far one run's mean moves with the seed: per fold, the sample sd over seeds of each run's mean over its
    evaluated cases, pooled over folds (root mean variance). NaN with one seed."""
    if values.shape[1] < 2:
        return math.nan
    with warnings.catch_warnings():     # a run that evaluated no case has no mean: NaN, left out of the pooling
        warnings.simplefilter("ignore", RuntimeWarning)
        run_means = np.nanmean(values, axis=2)                    # (folds, seeds)
        return float(np.sqrt(np.nanmean(np.nanvar(run_means, axis=1, ddof=1))))


def hierarchical_resamples(diff: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Means of ``diff`` ((folds, seeds, cases), arm - baseline of the same fold, seed and case; NaN where not
    evaluated) under a two-level bootstrap: seeds drawn with replacement within each fold (a run is the arm's and
    the baseline's model of one fold and seed), then cases drawn with replacement (each keeps the runs that
    evaluated it). The statistic is the mean over cases of each case's mean over its resampled runs."""
    diff = diff[:, :, np.isfinite(diff).any(axis=(0, 1))]           # cases no run evaluated are not pairs
    folds, seeds, cases = diff.shape
    rng = np.random.default_rng(seed)
    if seeds > 1:   # one seed: no draw, so that the interval is the case bootstrap's (``bootstrap_ci``) exactly
        pick_s = rng.integers(0, seeds, (resamples, folds, seeds))
        runs = diff[np.arange(folds)[None, :, None], pick_s]         # (resamples, folds, seeds, cases)
    else:
        runs = np.broadcast_to(diff, (1,) + diff.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_case = np.nanmean(runs.reshape(runs.shape[0], folds * seeds, cases), axis=1)
    pick_c = rng.integers(0, cases, (resamples, cases))
    if per_case.shape[0] == 1:
        return per_case[0][pick_c].mean(axis=1)
    return np.nanmean(np.take_along_axis(per_case, pick_c, axis=1), axis=1)


def verdict(mean_diff: float, ci_low: float, ci_high: float, spread: float) -> str:
    """'gain' when the CI lies above zero and the mean difference is larger than what another seed of the
    baseline moves one run's mean (``spread``); 'loss' the same below; else 'level'. Without a measured spread
    (one seed of the baseline) nothing stands clear of it: 'level', whatever the CI over that one pair's cases says
    (two seeds of stock nnU-Net differed with p = 0.005 there)."""
    if not np.isfinite(ci_low) or not np.isfinite(mean_diff) or not np.isfinite(spread):
        return "level"
    clear = spread
    if ci_low > 0 and mean_diff > clear:
        return "gain"
    if ci_high < 0 and mean_diff < -clear:
        return "loss"
    return "level"


def compare_runs(arm: np.ndarray, baseline: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> dict:
    """The comparison over runs of two (folds, seeds, cases) arrays with the same folds, seeds and cases: mean
    difference (over cases, each averaged over its runs), the gain per fold (averaged over seeds), the hierarchical
    bootstrap's 95% CI, both seed spreads and the verdict."""
    diff = arm - baseline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_case = np.nanmean(diff.reshape(-1, diff.shape[2]), axis=0)
        fold_gains = [float(g) for g in np.nanmean(diff, axis=(1, 2))]
    per_case = per_case[np.isfinite(per_case)]
    mean_diff = float(per_case.mean()) if per_case.size else math.nan
    if testable(per_case.size):
        low, high = (float(x) for x in np.percentile(hierarchical_resamples(diff, resamples, seed), [2.5, 97.5]))
    else:
        low, high = math.nan, math.nan
    spread_b, spread_a = seed_spread(baseline), seed_spread(arm)
    return {"mean_diff": mean_diff, "ci_low": low, "ci_high": high, "n_seeds": diff.shape[1],
            "fold_gains": fold_gains, "seed_sd_baseline": spread_b, "seed_sd_arm": spread_a,
            "verdict": verdict(mean_diff, low, high, spread_b)}


def compare_runs_with_baseline(rows: list, trainers: list, organs: list, metric: str = "dice") -> list:
    """``compare_with_baseline``'s table with the comparison over runs beside it: the CI is the hierarchical
    bootstrap's (seeds within folds, then cases; with one seed exactly the case bootstrap), plus ``RUN_COLUMNS``
    (seeds, gain per fold averaged over seeds, both seed spreads, verdict). Wilcoxon p and wins/ties/losses stay
    over the cases (each averaged over its folds and seeds): they say how consistent a difference is over cases,
    not whether it survives another seed."""
    folds = sorted({int(r["fold"]) for r in rows})
    seeds = sorted({_seed_of(r) for r in rows}, key=lambda s: -1 if s is None else s)
    cases = sorted({r["case"] for r in rows})
    table = compare_with_baseline(rows, trainers, organs, metric)
    for row in table:
        organ_set = list(organs) if row["organ"] == MEAN else [row["organ"]]
        arm, base = (run_array(rows, t, folds, seeds, cases, organ_set, metric) for t in (row["trainer"], row["baseline"]))
        r = compare_runs(arm, base)
        if not testable(row["n_pairs"]):
            r["ci_low"] = r["ci_high"] = math.nan
            r["verdict"] = "level"
        row.update(ci_low=r["ci_low"], ci_high=r["ci_high"], n_seeds=r["n_seeds"],
                   fold_gains=" ".join(f"{g:+.4f}" for g in r["fold_gains"]),
                   seed_sd_baseline=r["seed_sd_baseline"], seed_sd_arm=r["seed_sd_arm"], verdict=r["verdict"])
    return table
