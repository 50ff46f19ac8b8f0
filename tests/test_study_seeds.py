"""The verdict over runs (fold x seed), tried on simulated studies before it is used on real runs: numbers drawn
with a known case effect, seed (run) effect and case-by-run noise, at the seed spread the length study measured
(another seed of stock nnU-Net moved a fold's held-out Dice by -0.034 to +0.016: about 0.02 per run). Vectorised
numpy, seconds; no training."""
import numpy as np
import pytest

from nnunet_sacl.analysis.stats import compare_runs, compare_runs_with_baseline

FOLDS, SEEDS, PER_FOLD = 3, 3, 4          # the demo study: 3 folds, 3 seeds, 12 validation crops (4 per fold)
SEED_SD, CASE_SD, NOISE_SD = 0.02, 0.1, 0.02


def simulated_study(rng, gain: float):
    """Arm and baseline (folds, seeds, cases) arrays; each case is evaluated by its own fold only (NaN elsewhere)."""
    cases = FOLDS * PER_FOLD
    case = rng.normal(0.2, CASE_SD, (1, 1, cases))
    evaluated = np.full((FOLDS, 1, cases), np.nan)
    for f in range(FOLDS):
        evaluated[f, :, f * PER_FOLD:(f + 1) * PER_FOLD] = 0.0

    def arm(shift):
        return (evaluated + case + shift + rng.normal(0, SEED_SD, (FOLDS, SEEDS, 1))
                + rng.normal(0, NOISE_SD, (FOLDS, SEEDS, cases)))
    return arm(gain), arm(0.0)


def verdicts(gain: float, studies: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    found = [compare_runs(*simulated_study(rng, gain), resamples=1000)["verdict"] for _ in range(studies)]
    return {v: found.count(v) for v in ("gain", "level", "loss")}


def test_null_arm_is_called_a_gain_in_at_most_5_percent_of_1000_studies():
    counts = verdicts(0.0, 1000, seed=1)
    assert counts["gain"] <= 50, counts          # measured: 15 of 1000 (and 15 losses)
    assert counts["loss"] <= 50, counts


def test_a_true_gain_of_005_is_found_at_the_measured_seed_spread():
    counts = verdicts(0.05, 300, seed=2)
    assert counts["gain"] >= 0.8 * 300, counts   # measured: 993 of 1000


def test_a_gain_within_one_seeds_spread_is_not_called_a_gain():
    """One seed's worth of difference, however consistent over the cases, is level: a run's seed moves the mean by
    about SEED_SD, so a difference below it is not a difference."""
    arm = np.zeros((3, 3, 12)) + np.array([0.0, 0.03, -0.03])[None, :, None]
    base = arm.copy()
    arm = arm + 0.01
    r = compare_runs(arm, base, resamples=1000)
    assert r["ci_low"] > 0 and r["seed_sd_baseline"] == pytest.approx(0.03)
    assert r["verdict"] == "level"


def rows_of(trainer, values, folds=(0, 1, 2), seeds=(1, 2, 3)):
    """per_case rows of one organ from a (folds, seeds, cases) array (NaN: not evaluated)."""
    rows = []
    for fi, f in enumerate(folds):
        for si, s in enumerate(seeds):
            for c in range(values.shape[2]):
                if np.isfinite(values[fi, si, c]):
                    rows.append({"trainer": trainer, "fold": f, "seed": s, "case": f"case_{c:02d}", "organ": "liver",
                                 "dice": values[fi, si, c], "nsd": values[fi, si, c], "reference_voxels": 10})
    return rows


def test_two_identical_arms_under_two_names_are_level_on_every_endpoint():
    """The same trainer under two names (seeded: the same runs) gives no difference; from per_case rows, as the
    study's report computes it."""
    values, _ = simulated_study(np.random.default_rng(3), 0.0)
    rows = rows_of("nnUNetTrainer", values) + rows_of("nnUNetTrainer_copy", values)
    for metric in ("dice", "nsd"):
        table = compare_runs_with_baseline(rows, ["nnUNetTrainer", "nnUNetTrainer_copy"], ["liver"], metric)
        assert {r["organ"] for r in table} == {"liver", "mean"}
        for r in table:
            assert r["verdict"] == "level" and r["mean_diff"] == 0.0 and r["ci_low"] == r["ci_high"] == 0.0, r
            assert r["n_seeds"] == 3 and r["seed_sd_baseline"] > 0


def test_a_real_gain_in_rows_is_a_gain_and_a_real_loss_a_loss():
    rng = np.random.default_rng(4)
    gain, base = simulated_study(rng, 0.08)
    rows = rows_of("base", base) + rows_of("better", gain) + rows_of("worse", base - (gain - base))
    table = compare_runs_with_baseline(rows, ["base", "better", "worse"], ["liver"], "dice")
    assert [r["verdict"] for r in table if r["organ"] == "mean"] == ["gain", "loss"]


def test_one_seed_calls_no_gain_however_clear_its_ci():
    """A study of one seed (every study without seeds) measures no seed spread: no difference stands clear of it, so
    the verdict is level, even where the CI over the cases of that one pair of models excludes zero."""
    base = np.random.default_rng(5).normal(0.5, 0.1, (3, 1, 12))
    r = compare_runs(base + 0.05, base, resamples=1000)
    assert r["ci_low"] > 0 and r["n_seeds"] == 1 and r["verdict"] == "level"
